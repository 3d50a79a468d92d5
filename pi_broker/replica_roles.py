"""ReplicaRoles: applies the zookeeper's metadata snapshots to this broker.

For every snapshot newer than the one applied (older ones are ignored, one of another cluster is refused):
1. topics in `deleted_topics` that this broker holds are deleted (only an explicit tombstone deletes: a topic merely
   missing from a snapshot is left alone);
2. topics listing this broker among some partition's replicas are created locally if missing;
3. each local partition takes the role the snapshot gives it: leader at epoch E (the epoch's start goes into the
   leader-epoch cache), follower of broker L at epoch E (handed to L's fetch loop, which truncates first), or none.
Snapshots are applied one at a time (deletion awaits the group commit), in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from pi_broker.cluster_metadata import MetadataSnapshot, TopicAssignment, parse_snapshot
from pi_broker.partition import Partition, TopicPartition
from pi_broker.topic_registry import TopicSpec
from pikafka.errors import ErrorCode, PikafkaError

if TYPE_CHECKING:
    from pi_broker.broker import Broker

log = logging.getLogger(__name__)


class Fetchers(Protocol):
    def follow(self, partition: Partition, leader_id: int, host: str, port: int, epoch: int) -> None: ...

    def unfollow(self, key: TopicPartition) -> None: ...

    async def retire_idle(self) -> None: ...


class ReplicaRoles:
    def __init__(self, broker: Broker, fetchers: Fetchers) -> None:
        self.broker = broker
        self.fetchers = fetchers
        self.me = broker.config.broker_id
        self._lock = asyncio.Lock()
        self.applied_version = -1

    async def apply(self, raw: object) -> bool:
        """Apply a snapshot (a decoded map); False when it was not newer than the applied one."""
        snapshot = parse_snapshot(raw)
        async with self._lock:
            known = self.broker.cluster_id
            if known is not None and snapshot.cluster_id != known:
                raise PikafkaError(
                    ErrorCode.CLUSTER_ID_MISMATCH,
                    f"snapshot of cluster {snapshot.cluster_id[:40]!r}; this broker belongs to {known!r}",
                )
            if snapshot.version <= self.applied_version:
                return False
            self.broker.adopt_cluster_id(snapshot.cluster_id)
            await self._delete_tombstoned(snapshot)
            for topic in snapshot.topics.values():
                self._create_if_replica(topic)
            self.broker.snapshot = snapshot
            self.applied_version = snapshot.version
            self._assign_roles(snapshot)
            await self.fetchers.retire_idle()
            log.debug("applied metadata version %d", snapshot.version)
            return True

    async def _delete_tombstoned(self, snapshot: MetadataSnapshot) -> None:
        for name in sorted(snapshot.deleted_topics):
            topic = self.broker.local_topic(name)
            if topic is None or name in snapshot.topics:
                continue
            for partition in topic.partitions:
                self.fetchers.unfollow(partition.key)
            log.info("topic %s was deleted in the cluster; removing its local data", name)
            await self.broker.delete_topic(name)

    def _create_if_replica(self, topic: TopicAssignment) -> None:
        if not any(self.me in p.replicas for p in topic.partitions):
            return
        local = self.broker.local_topic(topic.name)
        if local is not None:
            if len(local.partitions) != len(topic.partitions):
                log.error(
                    "topic %s has %d partitions here but %d in the cluster; leaving it alone",
                    topic.name,
                    len(local.partitions),
                    len(topic.partitions),
                )
            return
        spec = TopicSpec(topic.name, len(topic.partitions), topic.replication_factor, topic.config)
        self.broker.create_local_topic(spec)

    def _assign_roles(self, snapshot: MetadataSnapshot) -> None:
        now = time.monotonic()
        for topic in snapshot.topics.values():
            local = self.broker.local_topic(topic.name)
            if local is None or len(local.partitions) != len(topic.partitions):
                continue
            for assignment, partition in zip(topic.partitions, local.partitions, strict=True):
                epoch = assignment.leader_epoch
                leader = assignment.leader
                if epoch < partition.leader_epoch:
                    continue  # cannot happen with monotonic snapshots; never go back in epochs
                if self.me not in assignment.replicas or leader is None:
                    self.fetchers.unfollow(partition.key)
                    partition.become_leaderless(epoch, assignment.replicas)
                elif leader == self.me:
                    self.fetchers.unfollow(partition.key)
                    partition.become_leader(epoch, assignment.replicas, assignment.isr, snapshot.version, now)
                else:
                    info = snapshot.brokers.get(leader)
                    if info is None:
                        log.error("%s: leader %d is not among the snapshot's brokers", partition.key, leader)
                        continue
                    partition.become_follower(leader, epoch, assignment.replicas)
                    self.fetchers.follow(partition, leader, info.host, info.port, epoch)
