"""One partition replica as the broker serves it: the log, its role (leader, follower or none), the leader epoch, the
high watermark and the producer table.

On a standalone broker the partition always leads at epoch 0 and the high watermark is the flushed offset: consumers
only ever see records that are on disk, so a record a consumer read can never vanish in a power cut. In a cluster
(docs/replication.md) the role comes from the zookeeper's snapshots, and the high watermark of a leader is the
smallest durable log end over its in-sync replicas (IsrTracker); a follower learns the leader's from its fetches.
Produce acknowledgements wait in two offset-ordered AckQueues (pending_acks.py), one released by the flushed offset
and one by the high watermark, so a moving bound answers exactly the requests it covers. Long-poll fetches and
topic-data observers wait on a future that the partition resolves (and replaces) whenever the high watermark, the
flushed offset or the role changes; follower fetches wait on a second one that moves with the log end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from pi_broker.isr_tracker import IsrTracker
from pi_broker.log.partition_log import PartitionLog
from pi_broker.pending_acks import AckQueue, AckWaiter
from pi_broker.producer_state import Duplicate, ProducerStateTable, WrittenBatch, is_idempotent
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import BatchHeader, parse_header

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}"


class AppendOutcome(NamedTuple):
    base_offset: int
    last_offset: int
    duplicate: bool


class Role(Enum):
    LEADER = "leader"
    FOLLOWER = "follower"
    NONE = "none"  # a clustered replica before its first snapshot, without a leader, or deposed


class Partition:
    def __init__(
        self, key: TopicPartition, partition_log: PartitionLog, *, broker_id: int = 1, clustered: bool = False
    ):
        self.key = key
        self.log = partition_log
        self.broker_id = broker_id
        self.clustered = clustered
        # A clustered replica leads nothing until the zookeeper says so, whatever it did before a restart.
        self.role = Role.NONE if clustered else Role.LEADER
        self.leader_epoch = -1 if clustered else 0
        self.leader_id: int | None = None if clustered else broker_id
        self.replicas: tuple[int, ...] = () if clustered else (broker_id,)
        self.isr: IsrTracker | None = None  # the leader's view of its followers (cluster leaders only)
        self.isr_version = -1  # metadata version the ISR above was learned at; older news is ignored
        self.epoch_start_offset = 0  # the log end when this replica started leading at leader_epoch
        self.leader_high_watermark = 0  # as a follower: the high watermark the leader sent with its last answer
        self.producers = ProducerStateTable.rebuild(partition_log.recent_batch_headers())
        # Standalone: whatever survived recovery is on disk. Clustered: nothing is known to be on the other replicas,
        # so a replica that is elected leader exposes records only once its ISR holds them.
        self._high_watermark = partition_log.log_start_offset if clustered else partition_log.flushed_offset
        self._changed: asyncio.Future[None] | None = None
        self._appended: asyncio.Future[None] | None = None
        self._flush_acks = AckQueue()  # released by the flushed offset (acks=1 on a cluster)
        self._commit_acks = AckQueue()  # released by the high watermark (standalone acks>=1, cluster acks=all)
        self._flush_error: PikafkaError | None = None
        # Set when an fsync failed: Linux may have dropped the dirty pages, so nothing written since can be trusted
        # to reach the disk; the partition refuses writes until the broker restarts and recovers the log.
        self.failed: PikafkaError | None = None
        self.closed = False

    def __repr__(self) -> str:
        return (
            f"<Partition {self.key} {self.role.value}@{self.leader_epoch} hw={self._high_watermark} "
            f"leo={self.log.log_end_offset}>"
        )

    @property
    def high_watermark(self) -> int:
        return self._high_watermark

    @property
    def min_insync_replicas(self) -> int:
        return self.log.config.min_insync_replicas

    # -- roles -------------------------------------------------------------------------------------------------

    def require_leader(self, request_epoch: int | None = None) -> None:
        """Raise unless this replica leads (at `request_epoch`, when the request names one)."""
        if request_epoch is not None and 0 <= request_epoch < self.leader_epoch:
            raise PikafkaError(
                ErrorCode.FENCED_LEADER_EPOCH,
                f"{self.key}: epoch {request_epoch} is older than the current {self.leader_epoch}; refresh metadata",
            )
        if self.role is not Role.LEADER or (request_epoch is not None and request_epoch > self.leader_epoch):
            raise PikafkaError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"broker {self.broker_id} does not lead {self.key}"
                + (f" at epoch {request_epoch}" if request_epoch is not None else "")
                + f" (its role: {self.role.value} at epoch {self.leader_epoch}, leader {self.leader_id})",
            )

    def become_leader(
        self, epoch: int, replicas: tuple[int, ...], isr: tuple[int, ...], metadata_version: int, now: float
    ) -> None:
        """Lead from now on at `epoch`: its batches start at the current log end (recorded in the epoch cache)."""
        if self.role is Role.LEADER and self.leader_epoch == epoch:
            self.adopt_isr(isr, metadata_version, now)
            return
        self._fail_acks()
        self.role = Role.LEADER
        self.leader_epoch = epoch
        self.leader_id = self.broker_id
        self.replicas = replicas
        self.epoch_start_offset = self.log.log_end_offset
        self.log.epochs.assign(epoch, self.epoch_start_offset)
        self.isr = IsrTracker(self.broker_id, replicas, isr, now)
        self.isr_version = metadata_version
        log.info("%s: leading at epoch %d from offset %d, isr %s", self.key, epoch, self.epoch_start_offset, isr)
        self._recompute_high_watermark()
        self._wake_all()

    def become_follower(self, leader_id: int, epoch: int, replicas: tuple[int, ...]) -> bool:
        """Follow `leader_id` at `epoch`; returns False when that was already the role (nothing to redo)."""
        if self.role is Role.FOLLOWER and self.leader_id == leader_id and self.leader_epoch == epoch:
            return False
        was = self.role
        self._fail_acks()
        self.role = Role.FOLLOWER
        self.leader_epoch = epoch
        self.leader_id = leader_id
        self.replicas = replicas
        self.isr = None
        log.info("%s: following broker %d at epoch %d (was %s)", self.key, leader_id, epoch, was.value)
        self._wake_all()
        return True

    def become_leaderless(self, epoch: int, replicas: tuple[int, ...]) -> None:
        """No live in-sync replica leads the partition (or this broker is no replica of it): serve nothing."""
        if self.role is Role.NONE and self.leader_epoch == epoch:
            return
        self._fail_acks()
        self.role = Role.NONE
        self.leader_epoch = max(self.leader_epoch, epoch)
        self.leader_id = None
        self.replicas = replicas
        self.isr = None
        self._wake_all()

    def step_down(self, why: str) -> None:
        """The zookeeper refused this leader's epoch: stop leading at once, before any newer snapshot arrives."""
        if self.role is not Role.LEADER:
            return
        log.warning("%s: stepping down from epoch %d: %s", self.key, self.leader_epoch, why)
        self._fail_acks()
        self.role = Role.NONE
        self.leader_id = None
        self.isr = None
        self._wake_all()

    def adopt_isr(self, isr: tuple[int, ...], metadata_version: int, now: float) -> None:
        """The zookeeper's ISR for this leader's epoch (from a snapshot or its answer to an ISR change)."""
        if self.isr is None or metadata_version < self.isr_version:
            return
        self.isr_version = metadata_version
        self.isr.adopt(isr, now)
        self._recompute_high_watermark()
        self._wake_all()

    # -- producing ---------------------------------------------------------------------------------------------

    def check_appends(self, headers: Sequence[BatchHeader]) -> None:
        """Raise if any batch of a request would be refused; checks batches of one request against each other."""
        pending = ProducerStateTable()
        for header in headers:
            if self.producers.check(header, pending) is None and is_idempotent(header):
                if pending.entry(header.producer_id) is None:
                    current = self.producers.copy_entry(header.producer_id)
                    if current is not None:
                        pending.adopt(header.producer_id, current)
                # Placeholder offsets: only the sequences matter for the checks that follow.
                pending.record(header, -1, -1)

    def append(self, batch: bytes, header: BatchHeader) -> AppendOutcome:
        """Write one validated batch (or recognise it as a retry); no fsync, the group commit does that."""
        if self.closed:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {self.key} was deleted")
        if self.failed is not None:
            raise self.failed
        decision = self.producers.check(header)
        if isinstance(decision, Duplicate):
            original: WrittenBatch = decision.original
            return AppendOutcome(original.base_offset, original.last_offset, duplicate=True)
        result = self.log.append(batch, self.leader_epoch)  # raises STORAGE_ERROR itself when the disk fails
        self.producers.record(header, result.base_offset, result.last_offset)
        self._wake_appended()
        return AppendOutcome(result.base_offset, result.last_offset, duplicate=False)

    # -- replicating (follower side) ---------------------------------------------------------------------------

    def append_replica(self, batch: bytes, header: BatchHeader) -> None:
        """Append a batch fetched from the leader, unchanged (its offsets and epoch are the leader's)."""
        if self.closed:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {self.key} was deleted")
        if self.failed is not None:
            raise self.failed
        self.log.append_replica(batch)
        self.producers.record(header, header.base_offset, header.last_offset)
        self._wake_appended()

    def learn_leader_high_watermark(self, high_watermark: int) -> None:
        self.leader_high_watermark = high_watermark
        self._recompute_high_watermark()

    def truncate_to(self, offset: int) -> None:
        """Cut the log to `offset` (a divergent tail this replica must not keep); durable on return. An offset inside
        a batch cuts that whole batch: a batch is never split."""
        if offset >= self.log.log_end_offset:
            return
        offset = max(offset, self.log.log_start_offset)
        holding = self.log.read(offset, 1)
        if holding:
            offset = min(offset, parse_header(holding).base_offset)
        self.log.truncate_to(offset)
        self._after_truncation()

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Drop the whole log and continue at `offset` (this replica fell behind the leader's log start)."""
        self.log.truncate_fully_and_start_at(offset)
        self._after_truncation()

    def _after_truncation(self) -> None:
        self.producers = ProducerStateTable.rebuild(self.log.recent_batch_headers())
        self._high_watermark = min(self._high_watermark, self.log.log_end_offset)
        self._high_watermark = max(self._high_watermark, self.log.log_start_offset)
        self._wake_all()

    # -- replicating (leader side) -----------------------------------------------------------------------------

    def record_follower_fetch(self, replica: int, fetch_offset: int, now: float) -> None:
        if self.isr is None:
            return
        self.isr.record_fetch(replica, fetch_offset, self.log.log_end_offset, now)
        self._recompute_high_watermark()

    # -- the high watermark and waiting on it ------------------------------------------------------------------

    def flushed(self) -> None:
        """The group commit advanced the log's flushed offset."""
        self._flush_error = None
        self._flush_acks.release_below(min(self.log.flushed_offset, self.log.log_end_offset))
        self._recompute_high_watermark()
        self._wake()

    def _recompute_high_watermark(self) -> None:
        flushed = min(self.log.flushed_offset, self.log.log_end_offset)
        if not self.clustered:
            candidate = flushed
        elif self.role is Role.LEADER and self.isr is not None:
            bound = self.isr.replicated_bound()
            candidate = flushed if bound is None else min(flushed, bound)
        elif self.role is Role.FOLLOWER:
            candidate = min(flushed, self.leader_high_watermark)
        else:
            return
        if candidate > self._high_watermark:
            self._high_watermark = candidate
            self._commit_acks.release_below(candidate)
            self._wake()

    def flush_failed(self, error: PikafkaError) -> None:
        """An fsync failed: producers waiting for durability get the error instead of hanging, and later writes are
        refused (see `failed`)."""
        self._flush_error = error
        self.failed = error
        self._flush_acks.fail_all(error)
        self._commit_acks.fail_all(error)
        self._wake()

    def changed(self) -> asyncio.Future[None]:
        """A future resolved the next time the high watermark, the flushed offset or the role changes, a flush
        fails or the partition closes."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def appended(self) -> asyncio.Future[None]:
        """A future resolved the next time the log end moves (or the role changes, or the partition closes)."""
        if self._appended is None or self._appended.done():
            self._appended = asyncio.get_running_loop().create_future()
        return self._appended

    def ack_when_flushed(self, offset: int, pending: AckWaiter) -> None:
        """Have `pending` released once `offset` is fsynced on this replica (acks=1 in a cluster); nothing is queued
        when it already is. It fails with NOT_LEADER_OR_FOLLOWER if this replica stops leading first."""
        self._check_waitable()
        if self.log.flushed_offset <= offset:
            self._flush_acks.add(offset, pending)

    def ack_when_committed(self, offset: int, pending: AckWaiter) -> None:
        """Have `pending` released once `offset` is below the high watermark: fsynced on a standalone broker, held
        durably by every in-sync replica on a cluster leader (acks=all). It fails with NOT_LEADER_OR_FOLLOWER as
        soon as this replica stops leading at the current epoch, whatever became of the record."""
        self._check_waitable()
        if self._high_watermark <= offset:
            self._commit_acks.add(offset, pending)

    def _fail_acks(self) -> None:
        """The role or epoch changes: no produce still waiting here is answered with success any more. A follower
        may truncate the records (acks=1 waits would then be released by other records at the same offsets), and an
        acks=all wait was for this leader's epoch; the producer retries, and its sequence numbers make the retry of a
        record that did survive come back with the original offsets."""
        if len(self._commit_acks) or len(self._flush_acks):
            error = PikafkaError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"broker {self.broker_id} stopped leading {self.key} (epoch {self.leader_epoch}) before the records "
                "were acknowledged; retry against the new leader",
            )
            self._commit_acks.fail_all(error)
            self._flush_acks.fail_all(error)

    async def wait_flushed_to(self, end: int) -> None:
        """Return once everything below `end` (or below the log end, should a truncation cut it) is fsynced."""
        while self.log.flushed_offset < min(end, self.log.log_end_offset):
            self._check_waitable()
            # shield: the future is shared by every waiter; one waiter's timeout must not cancel it for the rest
            await asyncio.shield(self.changed())
            if self._flush_error is not None:
                raise self._flush_error

    def _check_waitable(self) -> None:
        if self.closed:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {self.key} was deleted")

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def _wake_appended(self) -> None:
        if self._appended is not None and not self._appended.done():
            self._appended.set_result(None)
        self._appended = None

    def _wake_all(self) -> None:
        self._wake()
        self._wake_appended()

    def _release_all_as_deleted(self) -> None:
        gone = PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {self.key} was deleted")
        self._flush_acks.fail_all(gone)
        self._commit_acks.fail_all(gone)

    def close(self) -> None:
        """Close the log (the storage flushes on close) and release every waiter."""
        if self.closed:
            return
        self.closed = True
        self._release_all_as_deleted()
        self._wake_all()
        self.log.close()

    def delete(self) -> None:
        """Release every waiter and remove the log's files (topic deletion); nothing is flushed."""
        self.closed = True
        self._release_all_as_deleted()
        self._wake_all()
        self.log.delete()
