"""The leader's side of replication: answering follower fetches and epoch-end questions.

A follower fetch is a /fetch carrying `replica_id` and, per partition, the `leader_epoch` the follower follows. It
differs from a consumer's in four ways:
- it reads up to the log end, not the high watermark (a follower must copy what is not yet committed, or nothing
  would ever be);
- its offset is news: everything below it is durable on that follower (it fsyncs before fetching again), which moves
  the follower's place in the ISR bookkeeping and possibly the high watermark;
- errors are per partition (`"error": "NAME: reason"` in that partition's entry), because one fetch carries every
  partition a follower replicates from this leader and one moved partition must not stall the others;
- a long poll wakes when the log end moves, not the high watermark.
Epoch checks: an older epoch than ours is FENCED_LEADER_EPOCH (the follower must refresh its metadata); not leading,
or a newer epoch than ours, is NOT_LEADER_OR_FOLLOWER (we are the stale one, or have not heard of it yet).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pi_broker.log.leader_epoch_cache import EpochEnd
from pi_broker.messages import EpochEndRequest, FetchPosition, FetchRequest
from pi_broker.partition import Partition, TopicPartition
from pikafka.errors import ErrorCode, PikafkaError

if TYPE_CHECKING:
    from pi_broker.broker import Broker


class FollowerFetchListener(Protocol):
    def follower_fetched(self, partition: Partition, replica: int) -> None: ...


@dataclass(frozen=True)
class ReplicaFetchedPartition:
    topic: str
    partition: int
    error: PikafkaError | None
    high_watermark: int = 0
    log_start_offset: int = 0
    log_end_offset: int = 0
    records: bytes = b""

    def to_wire(self) -> dict[str, object]:
        entry: dict[str, object] = {"topic": self.topic, "partition": self.partition}
        if self.error is not None:
            entry["error"] = str(self.error)
        entry.update(
            high_watermark=self.high_watermark,
            log_start_offset=self.log_start_offset,
            log_end_offset=self.log_end_offset,
            records=self.records,
        )
        return entry


class ReplicaFetchServer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.listener: FollowerFetchListener | None = None  # the ISR updater, on a clustered broker

    def _leading(self, topic: str, index: int, request_epoch: int | None) -> Partition:
        partition = self.broker.find_partition(TopicPartition(topic, index))
        if partition is None:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no partition {topic}-{index} on this broker")
        partition.require_leader(request_epoch)
        return partition

    async def fetch(self, request: FetchRequest) -> list[ReplicaFetchedPartition]:
        replica = request.replica_id
        assert replica is not None
        deadline = time.monotonic() + request.wait_ms / 1000
        first_pass = True
        while True:
            results: list[ReplicaFetchedPartition] = []
            waiting: list[Partition] = []
            budget = request.max_bytes
            for pos in request.partitions:
                try:
                    partition, entry = self._read_one(pos, replica, budget, note_offset=first_pass)
                except PikafkaError as exc:
                    results.append(ReplicaFetchedPartition(pos.topic, pos.partition, exc))
                    continue
                budget -= len(entry.records)
                results.append(entry)
                waiting.append(partition)
            first_pass = False
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not waiting or any(r.records or r.error for r in results):
                return results
            # No await between reading and taking these futures: no append can slip in between.
            waiters = {p.appended() for p in waiting}
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)

    def _read_one(
        self, pos: FetchPosition, replica: int, budget: int, *, note_offset: bool
    ) -> tuple[Partition, ReplicaFetchedPartition]:
        partition = self._leading(pos.topic, pos.partition, pos.leader_epoch)
        if replica not in partition.replicas:
            raise PikafkaError(ErrorCode.NOT_LEADER_OR_FOLLOWER, f"broker {replica} is no replica of {partition.key}")
        log = partition.log
        if not log.log_start_offset <= pos.offset <= log.log_end_offset:
            raise PikafkaError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"offset {pos.offset} is outside [{log.log_start_offset}, {log.log_end_offset}] of {partition.key}",
            )
        if note_offset:
            # Only the offset the follower sent counts, once: it says what was durable there when it asked.
            partition.record_follower_fetch(replica, pos.offset, time.monotonic())
            if self.listener is not None:
                self.listener.follower_fetched(partition, replica)
        data = b""
        if pos.offset < log.log_end_offset and budget > 0:
            data = log.read(pos.offset, budget)
        return partition, ReplicaFetchedPartition(
            pos.topic,
            pos.partition,
            None,
            partition.high_watermark,
            log.log_start_offset,
            log.log_end_offset,
            data,
        )

    def epoch_end(self, request: EpochEndRequest) -> EpochEnd:
        partition = self._leading(request.topic, request.partition, request.leader_epoch)
        return partition.log.epochs.end_offset_for(request.epoch, partition.log.log_end_offset)
