"""One partition as the broker serves it: the log, the leader epoch, the high watermark and the producer table.

On a standalone broker the high watermark is the flushed offset: consumers only ever see records that are on disk,
so a record a consumer read can never vanish in a power cut. In a cluster it will be the offset every in-sync replica
holds. Long-poll fetches, produce acknowledgements and topic-data observers all wait for the high watermark to move;
they do so on a future that the partition resolves (and replaces) each time it advances.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pi_broker.log.partition_log import PartitionLog
from pi_broker.producer_state import Duplicate, ProducerStateTable, WrittenBatch, is_idempotent
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import BatchHeader

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}"


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    base_offset: int
    last_offset: int
    duplicate: bool


class Partition:
    def __init__(self, key: TopicPartition, partition_log: PartitionLog, leader_epoch: int = 0) -> None:
        self.key = key
        self.log = partition_log
        self.leader_epoch = leader_epoch
        self.producers = ProducerStateTable.rebuild(partition_log.recent_batch_headers())
        # Whatever survived recovery is on disk; the storage says how far it is known to be durable.
        self._high_watermark = partition_log.flushed_offset
        self._changed: asyncio.Future[None] | None = None
        self._flush_error: PikafkaError | None = None
        # Set when an fsync failed: Linux may have dropped the dirty pages, so nothing written since can be trusted
        # to reach the disk; the partition refuses writes until the broker restarts and recovers the log.
        self.failed: PikafkaError | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"<Partition {self.key} hw={self._high_watermark} leo={self.log.log_end_offset}>"

    @property
    def high_watermark(self) -> int:
        return self._high_watermark

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
        return AppendOutcome(result.base_offset, result.last_offset, duplicate=False)

    # -- the high watermark and waiting on it ------------------------------------------------------------------

    def advance_high_watermark(self, offset: int) -> None:
        if offset > self._high_watermark:
            self._high_watermark = offset
            self._flush_error = None
            self._wake()

    def flush_failed(self, error: PikafkaError) -> None:
        """An fsync failed: producers waiting for durability get the error instead of hanging, and later writes are
        refused (see `failed`)."""
        self._flush_error = error
        self.failed = error
        self._wake()

    def changed(self) -> asyncio.Future[None]:
        """A future resolved the next time the high watermark moves, a flush fails or the partition closes."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    async def wait_durable(self, offset: int) -> None:
        """Return once `offset` is below the high watermark; raises STORAGE_ERROR if its fsync failed."""
        while self._high_watermark <= offset:
            if self.closed:
                raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {self.key} was deleted")
            waiter = self.changed()
            await waiter
            if self._flush_error is not None and self._high_watermark <= offset:
                raise self._flush_error

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def close(self) -> None:
        """Close the log (the storage flushes on close) and release every waiter."""
        if self.closed:
            return
        self.closed = True
        self._wake()
        self.log.close()

    def delete(self) -> None:
        """Release every waiter and remove the log's files (topic deletion); nothing is flushed."""
        self.closed = True
        self._wake()
        self.log.delete()
