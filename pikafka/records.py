"""The record batch: pikafka's one binary format, on the wire and on disk alike.

A producer encodes a batch, the leader validates its CRC, stamps the base offset and its leader epoch into the
header (both lie outside the CRC, as in Kafka, so stamping needs no re-hash) and appends the bytes unchanged to its
segment file; followers and consumers receive the very same bytes. Every integer is big-endian.

Batch header (61 bytes)::

    offset size field              meaning
    0      8    base_offset        int64  offset of the first record; stamped by the leader (producers send 0)
    8      4    batch_length       int32  bytes that follow this field (header rest + records)
    12     4    leader_epoch       int32  epoch of the leader that appended the batch; stamped by the leader
    16     1    magic              int8   format version, always 1
    17     4    crc                uint32 CRC-32 (zlib polynomial) of every byte from offset 21 to the batch end
    21     2    attributes         int16  reserved, 0 (compression would go here)
    23     4    last_offset_delta  int32  record_count - 1
    27     8    first_timestamp    int64  ms since the Unix epoch of the first record
    35     8    max_timestamp      int64  greatest record timestamp in the batch
    43     8    producer_id        int64  idempotent producer id, -1 when none
    51     2    producer_epoch     int16  producer epoch, -1 when none
    53     4    base_sequence      int32  sequence of the first record for that producer, -1 when none
    57     4    record_count       int32  number of records, >= 1

Record (repeated record_count times)::

    size field              meaning
    4    length             uint32 bytes that follow this field for this record
    4    timestamp_delta    int32  ms relative to first_timestamp
    4    key_length         int32  -1 for a null key
    n    key
    4    value_length       int32  -1 for a null value
    n    value
    2    header_count       uint16
         per header: key_length uint16, key (UTF-8), value_length int32 (-1 null), value

Offsets are dense: record i of a batch has offset base_offset + i.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

MAGIC = 1
HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
# Bytes before the batch_length field's coverage starts: base_offset + batch_length.
LENGTH_PREFIX = 12
CRC_START = 21
NO_PRODUCER_ID = -1
NO_SEQUENCE = -1

_REC_FIXED = struct.Struct(">Iii")  # length, timestamp_delta, key_length
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_OFFSET_EPOCH = struct.Struct(">q")
_EPOCH = struct.Struct(">i")

Header = tuple[str, bytes | None]


class CorruptBatchError(ValueError):
    """The bytes are not a whole, intact record batch (torn write, bit rot or a bad client)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record as a producer hands it over."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[Header] = ()
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """One record as read back, with the offset the leader gave it."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = field(default=())


class BatchHeader(NamedTuple):
    """A batch header's fields in wire order. A NamedTuple, not a frozen dataclass: the broker builds one for every
    batch produced, replicated or consumed, and a frozen dataclass of 13 fields took 2.3-2.6 µs to build here
    against 0.4-0.5 µs for the tuple."""

    base_offset: int
    batch_length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        """Bytes the whole batch occupies."""
        return LENGTH_PREFIX + self.batch_length

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count

    @property
    def last_sequence(self) -> int:
        return self.base_sequence + self.record_count - 1 if self.base_sequence >= 0 else NO_SEQUENCE


def _encode_record(out: bytearray, rec: Record, first_ts: int, now_ms: int) -> None:
    ts = rec.timestamp_ms if rec.timestamp_ms is not None else now_ms
    parts = bytearray()
    key = rec.key
    value = rec.value
    parts += _I32.pack(ts - first_ts)
    if key is None:
        parts += _I32.pack(-1)
    else:
        parts += _I32.pack(len(key))
        parts += key
    if value is None:
        parts += _I32.pack(-1)
    else:
        parts += _I32.pack(len(value))
        parts += value
    parts += _U16.pack(len(rec.headers))
    for hkey, hval in rec.headers:
        kb = hkey.encode()
        parts += _U16.pack(len(kb))
        parts += kb
        if hval is None:
            parts += _I32.pack(-1)
        else:
            parts += _I32.pack(len(hval))
            parts += hval
    out += struct.pack(">I", len(parts))
    out += parts


def encode_batch(
    records: Sequence[Record],
    *,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = -1,
    base_sequence: int = NO_SEQUENCE,
    base_offset: int = 0,
    leader_epoch: int = -1,
    now_ms: int | None = None,
) -> bytes:
    """Encode records into one batch. The offset and epoch fields are placeholders until a leader stamps them."""
    if not records:
        raise ValueError("a batch holds at least one record")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    stamps = [r.timestamp_ms if r.timestamp_ms is not None else now for r in records]
    first_ts = stamps[0]
    max_ts = max(stamps)
    body = bytearray()
    for rec in records:
        _encode_record(body, rec, first_ts, now)
    n = len(records)
    after_crc = (
        struct.pack(">hiqqqhii", 0, n - 1, first_ts, max_ts, producer_id, producer_epoch, base_sequence, n) + body
    )
    crc = zlib.crc32(after_crc)
    batch_length = HEADER_SIZE - LENGTH_PREFIX + len(body)
    head = struct.pack(">qiibI", base_offset, batch_length, leader_epoch, MAGIC, crc)
    return head + after_crc


def parse_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Read a batch header at pos; checks sizes and magic, not the CRC."""
    if len(buf) - pos < HEADER_SIZE:
        raise CorruptBatchError("truncated batch header")
    h = BatchHeader(*HEADER.unpack_from(buf, pos))
    if h.magic != MAGIC:
        raise CorruptBatchError(f"unknown batch magic {h.magic}")
    if h.batch_length < HEADER_SIZE - LENGTH_PREFIX or h.record_count < 1:
        raise CorruptBatchError("batch length or record count out of range")
    if h.last_offset_delta != h.record_count - 1:
        raise CorruptBatchError("last_offset_delta does not match record_count")
    return h


def check_batch(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the header at pos and verify the whole batch is present and its CRC matches."""
    h = parse_header(buf, pos)
    end = pos + h.size
    if end > len(buf):
        raise CorruptBatchError("truncated batch body")
    if zlib.crc32(memoryview(buf)[pos + CRC_START : end]) != h.crc:
        raise CorruptBatchError("batch CRC mismatch")
    return h


def split_batches(buf: bytes | bytearray | memoryview) -> list[BatchHeader]:
    """Validate a buffer that must hold one or more whole batches (a produce request's payload)."""
    headers: list[BatchHeader] = []
    pos = 0
    while pos < len(buf):
        h = check_batch(buf, pos)
        headers.append(h)
        pos += h.size
    if not headers:
        raise CorruptBatchError("no batch in payload")
    return headers


def iter_batches(buf: bytes | bytearray | memoryview) -> Iterator[tuple[BatchHeader, memoryview]]:
    """Yield whole, CRC-checked batches from a fetch response; raises on a corrupt one."""
    view = memoryview(buf)
    pos = 0
    while pos < len(view):
        h = check_batch(view, pos)
        yield h, view[pos : pos + h.size]
        pos += h.size


def stamp(batch: bytes | bytearray, base_offset: int, leader_epoch: int) -> bytes:
    """Return the batch with the leader's base offset and epoch written in (fields outside the CRC)."""
    out = bytearray(batch)
    _OFFSET_EPOCH.pack_into(out, 0, base_offset)
    _EPOCH.pack_into(out, LENGTH_PREFIX, leader_epoch)
    return bytes(out)


def decode_records(batch: bytes | bytearray | memoryview) -> list[DecodedRecord]:
    """Decode every record of one CRC-checked batch."""
    out: list[DecodedRecord] = []
    _walk_records(memoryview(batch), out)
    return out


def validate_records(batch: bytes | bytearray | memoryview) -> BatchHeader:
    """Check CRC and every record's framing without building objects: what a broker runs before appending,
    so a CRC-valid but malformed batch from a buggy client never reaches the log."""
    return _walk_records(memoryview(batch), None)


def _walk_records(view: memoryview, out: list[DecodedRecord] | None) -> BatchHeader:
    h = check_batch(view)
    pos = HEADER_SIZE
    end = h.size
    try:
        for i in range(h.record_count):
            length, ts_delta, key_len = _REC_FIXED.unpack_from(view, pos)
            rec_end = pos + 4 + length
            if rec_end > end or key_len < -1:
                raise CorruptBatchError("record runs past its batch")
            p = pos + 12
            key_at = p
            p += max(key_len, 0)
            (value_len,) = _I32.unpack_from(view, p)
            if value_len < -1:
                raise CorruptBatchError("negative value length")
            p += 4
            value_at = p
            p += max(value_len, 0)
            (nheaders,) = _U16.unpack_from(view, p)
            p += 2
            headers: list[Header] = []
            for _ in range(nheaders):
                (hk_len,) = _U16.unpack_from(view, p)
                p += 2
                hkey = bytes(view[p : p + hk_len]).decode()
                p += hk_len
                (hv_len,) = _I32.unpack_from(view, p)
                if hv_len < -1:
                    raise CorruptBatchError("negative header value length")
                p += 4
                hval: bytes | None = None
                if hv_len >= 0:
                    hval = bytes(view[p : p + hv_len])
                    p += hv_len
                headers.append((hkey, hval))
            if p != rec_end:
                raise CorruptBatchError("record length does not match its fields")
            if out is not None:
                key = bytes(view[key_at : key_at + key_len]) if key_len >= 0 else None
                value = bytes(view[value_at : value_at + value_len]) if value_len >= 0 else None
                out.append(DecodedRecord(h.base_offset + i, h.first_timestamp + ts_delta, key, value, tuple(headers)))
            pos = rec_end
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptBatchError(f"malformed record: {exc}") from exc
    if pos != end:
        raise CorruptBatchError("batch has bytes after its last record")
    return h
