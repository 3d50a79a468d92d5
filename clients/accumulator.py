"""The producer's per-partition record queues: which records form the next batch, and when it may go.

Rules it keeps:
- records of one partition collect into an open batch until it reaches max_batch_bytes or is linger old;
- at most one batch per partition is in flight (sent and not yet answered, or waiting to be re-sent), so batches
  land in the order they were made and a retry can never overtake a later batch;
- a batch gets its producer sequence when it first goes out, so the sequences of one partition are contiguous in the
  order the broker sees them, and a retry re-sends the very same bytes (same sequence) for the broker to de-duplicate.

No I/O happens here; the producer's sender asks `take_ready()` for work and reports the outcome back.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from clients.batch_encoding import PendingRecord, encode_pending
from clients.records import RecordMetadata, TopicPartition
from pikafka.records import NO_PRODUCER_ID, NO_SEQUENCE

# Per-record framing in a batch: length, timestamp delta, key length, value length, header count.
RECORD_OVERHEAD_BYTES = 18
BATCH_OVERHEAD_BYTES = 61
SEQUENCE_LIMIT = 2**31  # base_sequence is an int32; it wraps like Kafka's


def new_producer_id() -> int:
    """Random 62-bit id: no broker round trip needed, and collisions are practically impossible."""
    return secrets.randbits(62)


def record_size(record: PendingRecord) -> int:
    value, key, headers, _ = record
    size = RECORD_OVERHEAD_BYTES
    if key is not None:
        size += len(key)
    if value is not None:
        size += len(value)
    for hkey, hval in headers:
        size += 6 + len(hkey.encode()) + (len(hval) if hval is not None else 0)
    return size


@dataclass(eq=False)
class ProducerBatch:
    tp: TopicPartition
    created_at: float
    deadline: float  # delivery timeout: fail the batch rather than retry after this
    records: list[PendingRecord] = field(default_factory=list)
    futures: list[asyncio.Future[RecordMetadata]] = field(default_factory=list)
    size_bytes: int = BATCH_OVERHEAD_BYTES
    # Filled when the batch first goes out and kept for every retry.
    payload: bytes | None = None
    producer_id: int = NO_PRODUCER_ID
    base_sequence: int = NO_SEQUENCE
    timestamp_ms: int = 0
    attempts: int = 0
    sending: bool = False
    retry_at: float = 0.0
    # Set after a request holding several partitions failed for one of them: re-send alone to find which.
    send_alone: bool = False
    _done: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def complete(self, base_offset: int) -> None:
        """Resolve every record's future with its offset (-1 when unknown, acks=0)."""
        topic, partition = self.tp
        batch_ts = self.timestamp_ms
        for i, (record, fut) in enumerate(zip(self.records, self.futures, strict=True)):
            if not fut.done():
                ts = record[3]
                offset = base_offset + i if base_offset >= 0 else -1
                fut.set_result(RecordMetadata(topic, partition, offset, batch_ts if ts is None else ts))
        self._set_done()

    def fail(self, exc: BaseException) -> None:
        for fut in self.futures:
            if not fut.done():
                fut.set_exception(exc)
        # Nobody may be awaiting a fire-and-forget send's future; do not let asyncio log "never retrieved".
        for fut in self.futures:
            if not fut.cancelled():
                fut.exception()
        self._set_done()

    def wait_done(self) -> asyncio.Future[None]:
        """Resolves once every record of the batch is delivered or failed: one future to wait on per batch
        instead of one per record (gathering a future per record costs more than producing it)."""
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        return self._done

    def _set_done(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)


@dataclass(eq=False)
class PartitionQueue:
    producer_id: int
    next_sequence: int = 0
    open: ProducerBatch | None = None
    sealed: deque[ProducerBatch] = field(default_factory=deque)
    in_flight: ProducerBatch | None = None

    def is_empty(self) -> bool:
        return self.open is None and not self.sealed and self.in_flight is None


class RecordAccumulator:
    def __init__(
        self,
        *,
        max_batch_bytes: int,
        linger_s: float,
        delivery_timeout_s: float,
        idempotent: bool,
        on_seal: Callable[[TopicPartition], None] | None = None,
    ) -> None:
        self.max_batch_bytes = max_batch_bytes
        self.linger_s = linger_s
        self.delivery_timeout_s = delivery_timeout_s
        self.idempotent = idempotent
        self._on_seal = on_seal
        # One id for the whole producer, replaced per partition only when that partition's sequence is lost.
        self._producer_id = new_producer_id() if idempotent else NO_PRODUCER_ID
        self.queues: dict[TopicPartition, PartitionQueue] = {}
        self.buffered_bytes = 0

    @property
    def producer_id(self) -> int:
        return self._producer_id

    def _queue(self, tp: TopicPartition) -> PartitionQueue:
        q = self.queues.get(tp)
        if q is None:
            q = self.queues[tp] = PartitionQueue(self._producer_id)
        return q

    def append(
        self, tp: TopicPartition, record: PendingRecord, future: asyncio.Future[RecordMetadata], now: float
    ) -> bool:
        """Queue one record. True when the sender has something new to look at (a batch filled up or a linger
        timer must be armed); False when the record simply joined a batch the sender already knows about."""
        size = record_size(record)
        q = self._queue(tp)
        wake = False
        batch = q.open
        if batch is not None and batch.size_bytes + size > self.max_batch_bytes:
            self._seal(q)
            batch = None
            wake = True
        if batch is None:
            batch = q.open = ProducerBatch(tp, now, now + self.delivery_timeout_s)
            wake = True
        batch.records.append(record)
        batch.futures.append(future)
        batch.size_bytes += size
        self.buffered_bytes += size
        if batch.size_bytes >= self.max_batch_bytes:
            self._seal(q)
            wake = True
        return wake

    def _seal(self, q: PartitionQueue) -> None:
        batch = q.open
        if batch is None:
            return
        q.open = None
        q.sealed.append(batch)
        if self._on_seal is not None:
            self._on_seal(batch.tp)

    def take_ready(self, now: float, *, flushing: bool, now_ms: int) -> list[ProducerBatch]:
        """Batches to send now, each marked as sending. A partition yields at most one: its waiting retry, else its
        oldest sealed batch, else its open batch once linger old (at once when flushing)."""
        ready: list[ProducerBatch] = []
        for q in self.queues.values():
            batch = q.in_flight
            if batch is not None:
                if not batch.sending and batch.retry_at <= now:
                    batch.sending = True
                    ready.append(batch)
                continue
            if not q.sealed and q.open is not None and (flushing or now - q.open.created_at >= self.linger_s):
                self._seal(q)
            if q.sealed:
                batch = q.sealed.popleft()
                self._start(q, batch, now_ms)
                ready.append(batch)
        return ready

    def _start(self, q: PartitionQueue, batch: ProducerBatch, now_ms: int) -> None:
        """First departure: fix the producer id, sequence and timestamp, and encode once for every attempt."""
        if self.idempotent:
            batch.producer_id = q.producer_id
            batch.base_sequence = q.next_sequence
            q.next_sequence = (q.next_sequence + len(batch)) % SEQUENCE_LIMIT
        batch.timestamp_ms = now_ms
        batch.payload = encode_pending(
            batch.records,
            producer_id=batch.producer_id,
            producer_epoch=0 if self.idempotent else -1,
            base_sequence=batch.base_sequence,
            now_ms=now_ms,
        )
        batch.sending = True
        q.in_flight = batch

    def next_wakeup(self, now: float) -> float | None:
        """Loop time when `take_ready` would next return something without anything else happening."""
        earliest: float | None = None
        for q in self.queues.values():
            if q.in_flight is not None:
                when = None if q.in_flight.sending else q.in_flight.retry_at
            elif q.sealed:
                when = now
            elif q.open is not None:
                when = q.open.created_at + self.linger_s
            else:
                when = None
            if when is not None and (earliest is None or when < earliest):
                earliest = when
        return earliest

    def succeeded(self, batch: ProducerBatch, base_offset: int) -> None:
        batch.complete(base_offset)
        self._finish(batch)

    def failed(self, batch: ProducerBatch, exc: BaseException) -> None:
        """Give up on a batch. Its sequence range may or may not be in the log now, so the partition continues
        under a fresh producer id, which the broker accepts at any starting sequence."""
        batch.fail(exc)
        q = self.queues.get(batch.tp)
        if q is not None and self.idempotent:
            q.producer_id = new_producer_id()
            q.next_sequence = 0
        self._finish(batch)

    def retry_later(self, batch: ProducerBatch, retry_at: float) -> None:
        batch.sending = False
        batch.retry_at = retry_at

    def _finish(self, batch: ProducerBatch) -> None:
        q = self.queues.get(batch.tp)
        if q is not None and q.in_flight is batch:
            q.in_flight = None
        self.buffered_bytes -= batch.size_bytes - BATCH_OVERHEAD_BYTES

    def pending_batches(self) -> list[ProducerBatch]:
        return list(self._all_batches())

    def _all_batches(self) -> Iterator[ProducerBatch]:
        for q in self.queues.values():
            if q.in_flight is not None:
                yield q.in_flight
            yield from q.sealed
            if q.open is not None:
                yield q.open

    def fail_all(self, exc: BaseException) -> None:
        """Fail everything still queued (the producer is closing without being able to deliver)."""
        for batch in list(self._all_batches()):
            batch.fail(exc)
        self.queues.clear()
        self.buffered_bytes = 0

    def is_empty(self) -> bool:
        return all(q.is_empty() for q in self.queues.values())
