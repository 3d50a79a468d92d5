"""Idempotent-producer bookkeeping for one partition: which batches each producer id already wrote.

A producer retrying a batch whose acknowledgement was lost sends the very same (producer id, epoch, base sequence);
the partition answers with the offsets it gave the first copy instead of writing a second one. Only the last
`BATCHES_KEPT` batches per producer are remembered, as in Kafka, so a retry must come soon after the original.
The table is rebuilt at start from the batch headers of the log's newest segments, so it survives restarts.

Rules (docs/protocol.md, "Idempotence"):
- producer id < 0 or base sequence < 0: not idempotent, always written;
- unknown producer id, or a newer epoch than seen: any sequence starts it;
- older epoch: INVALID_PRODUCER_EPOCH;
- same epoch, (base, last) sequence of a remembered batch: duplicate, the original offsets are returned;
- same epoch, otherwise the base sequence must be the last written + 1: else OUT_OF_ORDER_SEQUENCE.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import BatchHeader

BATCHES_KEPT = 5
_SEQUENCE_LIMIT = 2**31  # sequences are int32 and wrap to 0 after the largest one


@dataclass(frozen=True, slots=True)
class WrittenBatch:
    base_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int


@dataclass(slots=True)
class ProducerEntry:
    epoch: int
    batches: deque[WrittenBatch] = field(default_factory=lambda: deque(maxlen=BATCHES_KEPT))

    @property
    def last_sequence(self) -> int:
        return self.batches[-1].last_sequence


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The batch was written before; answer with these offsets and write nothing."""

    original: WrittenBatch


def is_idempotent(header: BatchHeader) -> bool:
    return header.producer_id >= 0 and header.base_sequence >= 0


class ProducerStateTable:
    """Per producer id: its epoch and its last few batches, for one partition."""

    def __init__(self) -> None:
        self._producers: dict[int, ProducerEntry] = {}

    def __len__(self) -> int:
        return len(self._producers)

    def entry(self, producer_id: int) -> ProducerEntry | None:
        return self._producers.get(producer_id)

    @classmethod
    def rebuild(cls, headers: Iterable[BatchHeader]) -> ProducerStateTable:
        """Replay batch headers in log order (they carry their offsets); non-idempotent ones are skipped."""
        table = cls()
        for header in headers:
            if is_idempotent(header):
                table.record(header, header.base_offset, header.last_offset)
        return table

    def check(self, header: BatchHeader, pending: ProducerStateTable | None = None) -> Duplicate | None:
        """Decide about a batch before it is written: None means write it, Duplicate means don't; raises on a
        sequence gap or a fenced epoch. `pending` holds batches of the same request already accepted but not yet
        written, so several batches of one producer in one request are checked against each other too."""
        if not is_idempotent(header):
            return None
        entry = None
        if pending is not None:
            entry = pending.entry(header.producer_id)
        if entry is None:
            entry = self._producers.get(header.producer_id)
        if entry is None or not entry.batches:
            return None
        if header.producer_epoch < entry.epoch:
            raise PikafkaError(
                ErrorCode.INVALID_PRODUCER_EPOCH,
                f"producer {header.producer_id} epoch {header.producer_epoch} is older than {entry.epoch}",
            )
        if header.producer_epoch > entry.epoch:
            return None
        for written in entry.batches:
            if written.base_sequence == header.base_sequence and written.last_sequence == header.last_sequence:
                return Duplicate(written)
        expected = (entry.last_sequence + 1) % _SEQUENCE_LIMIT
        if header.base_sequence != expected:
            raise PikafkaError(
                ErrorCode.OUT_OF_ORDER_SEQUENCE,
                f"producer {header.producer_id} sent sequence {header.base_sequence}, expected {expected}",
            )
        return None

    def record(self, header: BatchHeader, base_offset: int, last_offset: int) -> None:
        """Remember a batch just written (or replayed from the log)."""
        if not is_idempotent(header):
            return
        entry = self._producers.get(header.producer_id)
        if entry is None or header.producer_epoch > entry.epoch:
            entry = ProducerEntry(epoch=header.producer_epoch)
            self._producers[header.producer_id] = entry
        entry.batches.append(WrittenBatch(header.base_sequence, header.last_sequence, base_offset, last_offset))

    def copy_entry(self, producer_id: int) -> ProducerEntry | None:
        entry = self._producers.get(producer_id)
        if entry is None:
            return None
        return ProducerEntry(entry.epoch, deque(entry.batches, maxlen=BATCHES_KEPT))

    def adopt(self, producer_id: int, entry: ProducerEntry) -> None:
        """Start a scratch table's view of a producer from the real table's entry."""
        self._producers[producer_id] = entry
