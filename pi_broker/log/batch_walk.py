"""Walking the record batches of a segment file with pread, one read-ahead window at a time.

Used by recovery (CRC-checking every batch), by reads (from an index position) and by truncation. The file is never
loaded whole: a 16 MiB segment of small sensor batches is walked in 16 KiB windows, so memory stays flat however large
segments are.

Recovery walks every batch of the last segment at each start, so this is the storage's hot loop: it unpacks only the
header fields the log needs, with one struct call, into a BatchSpan (about 1.5 us a batch) instead of building a full
records.BatchHeader (about 5 us); a Pi is several times slower than a desktop and starts with a full segment per
partition to check. The sanity checks mirror records.parse_header, and the CRC is records.CRC_START to the batch end.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

from pikafka.records import CRC_START, HEADER_SIZE, LENGTH_PREFIX, MAGIC, BatchHeader, parse_header

# One pread per window: big enough that walking many small batches costs few syscalls, small enough that stepping over
# the headers of a few large batches reads little more than the headers.
READ_AHEAD = 16 * 1024

# base_offset, batch_length, (leader_epoch), magic, crc, (attributes), last_offset_delta, (first_timestamp),
# max_timestamp, (producer_id, producer_epoch, base_sequence), record_count: see the table in pikafka/records.py.
_SPAN_FIELDS = struct.Struct(">qi4xbI2xi8xq14xi")
assert _SPAN_FIELDS.size == HEADER_SIZE
# producer_id at byte 43, (producer_epoch), base_sequence at byte 53.
_PRODUCER_FIELDS = struct.Struct(">q2xi")
_PRODUCER_AT = 43


class BatchSpan(NamedTuple):
    """Where one batch lies in a segment and the header fields the log needs."""

    position: int
    base_offset: int
    size: int  # bytes of the whole batch
    next_offset: int  # base_offset + record_count
    max_timestamp: int
    record_count: int

    @property
    def last_offset(self) -> int:
        return self.next_offset - 1

    @property
    def end(self) -> int:
        return self.position + self.size


class SegmentCorruption(Exception):
    """The bytes at `position` are not the next whole, intact batch: a torn write, bit rot or a stale index entry."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"at byte {position}: {reason}")
        self.position = position
        self.reason = reason


def span_at(buf: bytes | bytearray | memoryview, at: int = 0, position: int = 0) -> tuple[BatchSpan, int]:
    """The span of the batch whose header starts at buf[at] (at file position `position`), and its CRC field.
    Raises SegmentCorruption on what records.parse_header rejects; checks neither the body's length nor the CRC."""
    if len(buf) - at < HEADER_SIZE:
        raise SegmentCorruption(position, f"{len(buf) - at} bytes, too few for a batch header")
    base_offset, batch_length, magic, crc, last_offset_delta, max_timestamp, record_count = _SPAN_FIELDS.unpack_from(
        buf, at
    )
    if magic != MAGIC:
        raise SegmentCorruption(position, f"unknown batch magic {magic}")
    if batch_length < HEADER_SIZE - LENGTH_PREFIX or record_count < 1 or last_offset_delta != record_count - 1:
        raise SegmentCorruption(position, "batch length or record count out of range")
    span = BatchSpan(
        position, base_offset, LENGTH_PREFIX + batch_length, base_offset + record_count, max_timestamp, record_count
    )
    return span, crc


def walk_batches(fd: int, start: int, end: int, *, expected_offset: int, verify_crc: bool) -> Iterator[BatchSpan]:
    """Yield the spans of consecutive batches in [start, end) of the file; see BatchWalk."""
    return iter(BatchWalk(fd, start, end, expected_offset=expected_offset, verify_crc=verify_crc))


class BatchWalk:
    """The spans of consecutive batches in [start, end) of a file, read through a window.

    Iterating raises SegmentCorruption at the first position that does not hold a whole batch ending at or before
    `end`, whose base offset is the one the previous batch leads to (offsets are dense; the base offset lies outside
    the CRC, so density is the only check it gets), and, when verify_crc, whose CRC matches.
    """

    def __init__(self, fd: int, start: int, end: int, *, expected_offset: int, verify_crc: bool) -> None:
        self._fd = fd
        self._start = start
        self._end = end
        self._expected_offset = expected_offset
        self._verify_crc = verify_crc
        self._window = b""
        self._window_start = start  # file position of _window[0]

    def header(self, span: BatchSpan) -> BatchHeader:
        """The full header of the span just yielded, parsed from the window it was read through (no extra read)."""
        return parse_header(self._window, span.position - self._window_start)

    def has_producer_sequence(self, span: BatchSpan) -> bool:
        """Whether the span just yielded carries a producer id and sequence (an idempotent producer's batch), read
        without building its full header: the producer-state rebuild at start skips all other batches cheaply."""
        producer_id, base_sequence = _PRODUCER_FIELDS.unpack_from(
            self._window, span.position - self._window_start + _PRODUCER_AT
        )
        return bool(producer_id >= 0 and base_sequence >= 0)

    def __iter__(self) -> Iterator[BatchSpan]:
        fd, end, expected_offset = self._fd, self._end, self._expected_offset
        pos = self._start
        while pos < end:
            if end - pos < HEADER_SIZE:
                raise SegmentCorruption(pos, f"{end - pos} bytes, too few for a batch header")
            if pos + HEADER_SIZE > self._window_start + len(self._window):
                self._window = os.pread(fd, min(READ_AHEAD, end - pos), pos)
                self._window_start = pos
            at = pos - self._window_start
            span, crc = span_at(self._window, at, pos)
            if span.size > end - pos:
                raise SegmentCorruption(pos, f"batch of {span.size} bytes runs past the end ({end - pos} bytes left)")
            if span.base_offset != expected_offset:
                raise SegmentCorruption(pos, f"batch base offset {span.base_offset}, expected {expected_offset}")
            if self._verify_crc:
                if pos + span.size > self._window_start + len(self._window):
                    self._window = os.pread(fd, max(min(READ_AHEAD, end - pos), span.size), pos)
                    self._window_start = pos
                    at = 0
                if len(self._window) - at < span.size:
                    raise SegmentCorruption(pos, "the file is shorter than the batch")
                if zlib.crc32(memoryview(self._window)[at + CRC_START : at + span.size]) != crc:
                    raise SegmentCorruption(pos, "batch CRC mismatch")
            yield span
            pos += span.size
            expected_offset = span.next_offset
