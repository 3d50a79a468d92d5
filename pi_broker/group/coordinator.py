"""The group coordinator: which broker coordinates a group, and the group requests it serves.

A group is coordinated by the leader of partition `crc32(group_id) % N` of `__consumer_offsets` (created on first
use: N = 10, replication factor min(3, live brokers), min_insync_replicas min(2, R)). Membership and generations live
in memory here (GroupMembership); committed offsets live in that partition (OffsetStore). When leadership of the
partition moves, this broker drops its state for those groups and answers NOT_COORDINATOR; the new leader rebuilds
the offsets from its log and the members rejoin there.

Nothing runs in the background: every request first advances the group's clock (`tick`), and a join waiting for
its rebalance wakes at the group's next deadline, so silent members are expired by their peers' heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pi_broker.broker import Broker
from pi_broker.group.membership import GroupMembership, GroupState, JoinResult
from pi_broker.group.offset_store import OffsetStore
from pi_broker.partition import Role
from pi_broker.topic_registry import TopicSpec
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS
from pikafka.topic_config import TopicConfig

log = logging.getLogger(__name__)

_GROUP_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
# A coordinator that takes over a group with committed offsets waits this long in the first rebalance for the
# members of the previous coordinator to rejoin (Kafka's group.initial.rebalance.delay.ms).
TAKEOVER_REBALANCE_DELAY_S = 3.0
_MAX_WAIT_STEP_S = 0.5


def check_group_id(group_id: object) -> str:
    if not isinstance(group_id, str) or not _GROUP_ID_RE.fullmatch(group_id):
        raise PikafkaError(
            ErrorCode.INVALID_GROUP_ID,
            f"group id {str(group_id)[:40]!r} must be 1-249 ASCII letters, digits, '.', '_' or '-'",
        )
    return group_id


def offsets_partition_for(group_id: str, partitions: int) -> int:
    return zlib.crc32(group_id.encode()) % partitions


@dataclass
class _Group:
    store: OffsetStore
    membership: GroupMembership
    changed: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.changed is not None and not self.changed.done():
            self.changed.set_result(None)
        self.changed = None

    def waiter(self) -> asyncio.Future[None]:
        if self.changed is None or self.changed.done():
            self.changed = asyncio.get_running_loop().create_future()
        return self.changed


class GroupCoordinator:
    def __init__(self, broker: Broker, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.broker = broker
        self.clock = clock
        self._stores: dict[int, OffsetStore] = {}
        self._groups: dict[str, _Group] = {}
        self._creating = asyncio.Lock()

    # -- where a group lives -----------------------------------------------------------------------------------

    async def find_coordinator(self, group_id: str) -> dict[str, Any]:
        """The broker leading the group's offsets partition (creating `__consumer_offsets` on first use)."""
        check_group_id(group_id)
        count = self._offsets_partition_count()
        if count is None:
            await self._create_offsets_topic()
            count = self._offsets_partition_count()
            if count is None:
                raise PikafkaError(ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{OFFSETS_TOPIC} is being created; retry")
        index = offsets_partition_for(group_id, count)
        leader = self._leader_of(index)
        if leader is None:
            raise PikafkaError(
                ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{OFFSETS_TOPIC}-{index} has no leader right now; retry"
            )
        broker_id, host, port = leader
        return {"group": group_id, "id": broker_id, "host": host, "port": port, "partition": index}

    def _offsets_partition_count(self) -> int | None:
        snapshot = self.broker.snapshot
        if self.broker.clustered:
            if snapshot is None or OFFSETS_TOPIC not in snapshot.topics:
                return None
            return len(snapshot.topics[OFFSETS_TOPIC].partitions)
        topic = self.broker.local_topic(OFFSETS_TOPIC)
        return None if topic is None else len(topic.partitions)

    def _leader_of(self, index: int) -> tuple[int, str, int] | None:
        snapshot = self.broker.snapshot
        if not self.broker.clustered:
            return self.broker.config.broker_id, self.broker.advertised_host, self.broker.config.port
        if snapshot is None:
            return None
        leader = snapshot.topics[OFFSETS_TOPIC].partitions[index].leader
        info = snapshot.brokers.get(leader) if leader is not None else None
        if info is None or not info.alive:
            return None
        return info.id, info.host, info.port

    async def _create_offsets_topic(self) -> None:
        async with self._creating:
            if self._offsets_partition_count() is not None:
                return
            if not self.broker.clustered:
                config = TopicConfig.from_dict(
                    {**self.broker.config.topic_defaults.to_dict(), "flush_interval_ms": 0, "min_insync_replicas": 1}
                )
                self.broker.create_local_topic(TopicSpec(OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS, 1, config))
                return
            admin = self.broker.topic_admin
            snapshot = self.broker.snapshot
            if admin is None or snapshot is None:
                raise PikafkaError(ErrorCode.COORDINATOR_NOT_AVAILABLE, "this broker has no cluster metadata yet")
            live = sum(1 for b in snapshot.brokers.values() if b.alive)
            replicas = max(1, min(3, live))
            body = {
                "name": OFFSETS_TOPIC,
                "partitions": OFFSETS_TOPIC_PARTITIONS,
                "replication_factor": replicas,
                "config": {"min_insync_replicas": min(2, replicas), "flush_interval_ms": 0},
            }
            try:
                await admin.create_topic(body)
                log.info("created %s with replication factor %d", OFFSETS_TOPIC, replicas)
            except PikafkaError as exc:
                if exc.code is not ErrorCode.TOPIC_ALREADY_EXISTS:
                    raise

    def _group(self, group_id: str) -> _Group:
        """The group's state on this broker, which must coordinate it (else NOT_COORDINATOR)."""
        check_group_id(group_id)
        topic = self.broker.local_topic(OFFSETS_TOPIC)
        if topic is None:
            raise PikafkaError(
                ErrorCode.NOT_COORDINATOR, f"broker {self.broker.config.broker_id} holds no {OFFSETS_TOPIC}"
            )
        index = offsets_partition_for(group_id, len(topic.partitions))
        partition = topic.partitions[index]
        if partition.role is not Role.LEADER or partition.closed:
            raise PikafkaError(
                ErrorCode.NOT_COORDINATOR,
                f"broker {self.broker.config.broker_id} does not lead {partition.key}, which coordinates "
                f"group {group_id!r}; find the coordinator again",
            )
        store = self._stores.get(index)
        if store is None or not store.current or store.partition is not partition:
            store = OffsetStore(self.broker, partition)
            store.load()
            self._stores[index] = store
        group = self._groups.get(group_id)
        if group is None or group.store is not store:
            if group is not None:
                group.wake()  # joins waiting on the old leadership's state see NOT_COORDINATOR
            has_history = store.max_generation(group_id) > 0
            membership = GroupMembership(
                group_id,
                first_generation=store.max_generation(group_id),
                initial_delay_s=TAKEOVER_REBALANCE_DELAY_S if has_history else 0.0,
            )
            group = _Group(store, membership)
            self._groups[group_id] = group
        return group

    def _partition_counts(self, topics: set[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        snapshot = self.broker.snapshot
        for name in topics:
            if self.broker.clustered:
                if snapshot is not None and name in snapshot.topics:
                    counts[name] = len(snapshot.topics[name].partitions)
            else:
                topic = self.broker.local_topic(name)
                if topic is not None:
                    counts[name] = len(topic.partitions)
        return counts

    def _require_topics(self, topics: Sequence[str]) -> None:
        counts = self._partition_counts(set(topics))
        for name in topics:
            if name not in counts:
                raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name[:60]!r} does not exist")

    def _tick(self, group: _Group) -> None:
        membership = group.membership
        counts = self._partition_counts(membership.subscribed_topics())
        if membership.tick(self.clock(), counts):
            group.wake()

    # -- membership --------------------------------------------------------------------------------------------

    async def join(
        self,
        group_id: str,
        member_id: str,
        client_id: str,
        topics: Sequence[str],
        strategies: Sequence[str],
        session_timeout_s: float,
        rebalance_timeout_s: float,
    ) -> JoinResult:
        """Join (or rejoin) and wait for the rebalance to complete; the answer is this member's assignment."""
        group = self._group(group_id)
        self._require_topics(topics)
        membership = group.membership
        member_id = membership.join(
            member_id, client_id, topics, strategies, session_timeout_s, rebalance_timeout_s, self.clock()
        )
        group.wake()
        while True:
            self._tick(group)
            if self._groups.get(group_id) is not group or not group.store.current:
                raise PikafkaError(ErrorCode.NOT_COORDINATOR, f"coordination of group {group_id!r} moved; retry")
            result = membership.join_result(member_id)
            if result is not None:
                return result
            waiter = group.waiter()
            deadline = membership.next_deadline()
            step = _MAX_WAIT_STEP_S if deadline is None else max(0.01, min(_MAX_WAIT_STEP_S, deadline - self.clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(step):
                    await asyncio.shield(waiter)

    async def heartbeat(self, group_id: str, member_id: str, generation: int) -> None:
        group = self._group(group_id)
        self._tick(group)
        try:
            group.membership.heartbeat(member_id, generation, self.clock())
        finally:
            self._tick(group)

    async def leave(self, group_id: str, member_id: str) -> None:
        group = self._group(group_id)
        group.membership.leave(member_id, self.clock())
        self._tick(group)
        group.wake()

    # -- offsets -----------------------------------------------------------------------------------------------

    async def commit(
        self, group_id: str, member_id: str, generation: int, offsets: Sequence[tuple[str, int, int, str]]
    ) -> None:
        group = self._group(group_id)
        self._tick(group)
        partitions = [(topic, partition) for topic, partition, _, _ in offsets]

        def allowed() -> None:
            if not group.store.current:
                raise PikafkaError(ErrorCode.NOT_COORDINATOR, f"coordination of group {group_id!r} moved; retry")
            group.membership.check_commit(member_id, generation, partitions, self.clock())

        await self._write(group, list(offsets), generation, allowed)

    async def reset(self, group_id: str, offsets: Sequence[tuple[str, int, int | None]]) -> None:
        """Set (or, with None, delete) committed offsets of a group without live members."""
        group = self._group(group_id)
        self._tick(group)
        self._require_topics(sorted({topic for topic, _, _ in offsets}))

        def allowed() -> None:
            if not group.store.current:
                raise PikafkaError(ErrorCode.NOT_COORDINATOR, f"coordination of group {group_id!r} moved; retry")
            group.membership.check_commit("", -1, [], self.clock())

        entries = [(topic, partition, offset, "reset") for topic, partition, offset in offsets]
        await self._write(group, entries, group.membership.generation, allowed)

    async def _write(
        self,
        group: _Group,
        entries: Sequence[tuple[str, int, int | None, str]],
        generation: int,
        allowed: Callable[[], None],
    ) -> None:
        try:
            await group.store.commit(group.membership.group_id, entries, generation, allowed)
        except PikafkaError as exc:
            if exc.code in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.FENCED_LEADER_EPOCH):
                raise PikafkaError(ErrorCode.NOT_COORDINATOR, f"the offsets partition moved: {exc.reason}") from None
            raise

    async def committed(self, group_id: str, topics: set[str] | None = None) -> list[dict[str, Any]]:
        group = self._group(group_id)
        stored = await group.store.offsets(group_id)
        return [
            {
                "topic": topic,
                "partition": partition,
                "offset": value.offset,
                "metadata": value.metadata,
                "generation": value.generation,
                "timestamp": value.timestamp_ms,
            }
            for (topic, partition), value in sorted(stored.items())
            if topics is None or topic in topics
        ]

    # -- administration ----------------------------------------------------------------------------------------

    def list_groups(self) -> list[dict[str, Any]]:
        """The groups this broker coordinates: with members, or with committed offsets in a partition it leads."""
        names: set[str] = set()
        for index, store in list(self._stores.items()):
            if store.current:
                names |= store.groups()
            else:
                del self._stores[index]
        names |= {name for name, group in self._groups.items() if group.store.current}
        out = []
        for name in sorted(names):
            try:
                group = self._group(name)
            except PikafkaError:
                continue
            self._tick(group)
            out.append({"group": name, "state": group.membership.state.value, "members": len(group.membership.members)})
        return out

    async def describe(self, group_id: str) -> dict[str, Any]:
        group = self._group(group_id)
        self._tick(group)
        membership = group.membership
        committed = await self.committed(group_id)
        if membership.state is GroupState.EMPTY and not committed and not membership.members:
            raise PikafkaError(ErrorCode.GROUP_ID_NOT_FOUND, f"group {group_id!r} has no members and no offsets")
        now = self.clock()
        return {
            "group": group_id,
            "state": membership.state.value,
            "generation": membership.generation,
            "strategy": membership.strategy,
            "coordinator": self.broker.config.broker_id,
            "members": [
                {
                    "member_id": m.member_id,
                    "client_id": m.client_id,
                    "topics": list(m.topics),
                    "assignment": [{"topic": t, "partition": p} for t, p in m.assignment],
                    "last_seen_ms_ago": int((now - m.last_seen) * 1000),
                }
                for m in sorted(membership.members.values(), key=lambda m: m.member_id)
            ],
            "offsets": committed,
        }
