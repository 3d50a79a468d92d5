"""A faster encoder for the producer's hot path, byte-for-byte the format of `pikafka.records.encode_batch`.

The shared encoder builds a `Record` dataclass per record and packs each field separately (about 3 µs a record);
at tens of thousands of records a second that is most of a Pi's CPU. Here a record stays a plain tuple until its
batch is encoded, and each record is packed with one struct call for its fixed fields. The unit tests compare the
output with `encode_batch` on generated records, so the format has one definition and this is only a shortcut.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from pikafka.records import HEADER_SIZE, LENGTH_PREFIX, MAGIC, Header

# (value, key, headers, timestamp_ms or None for "when the batch is made")
PendingRecord = tuple[bytes | None, bytes | None, tuple[Header, ...], int | None]

_FRONT = struct.Struct(">Iii")  # record length, timestamp delta, key length
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_AFTER_CRC = struct.Struct(">hiqqqhii")
_HEAD = struct.Struct(">qiibI")
_NO_HEADERS = b"\x00\x00"
_NULL = _I32.pack(-1)
# Fixed bytes of a record after its length field: timestamp delta, key length, value length, header count.
_FIXED_AFTER_LENGTH = 14


def encode_pending(
    records: Sequence[PendingRecord],
    *,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    now_ms: int,
) -> bytes:
    """One record batch holding records, its offset and leader epoch left for the leader to stamp."""
    if not records:
        raise ValueError("a batch holds at least one record")
    first_ts = records[0][3]
    if first_ts is None:
        first_ts = now_ms
    max_ts = first_ts
    parts: list[bytes] = []
    append = parts.append
    front = _FRONT.pack
    i32 = _I32.pack
    for value, key, headers, ts in records:
        if ts is None:
            ts = now_ms
        if ts > max_ts:
            max_ts = ts
        key_len = -1 if key is None else len(key)
        value_len = -1 if value is None else len(value)
        length = _FIXED_AFTER_LENGTH + max(key_len, 0) + max(value_len, 0)
        header_bytes = _encode_headers(headers) if headers else _NO_HEADERS
        length += len(header_bytes) - 2
        append(front(length, ts - first_ts, key_len))
        if key:
            append(key)
        append(i32(value_len))
        if value:
            append(value)
        append(header_bytes)
    body = b"".join(parts)
    n = len(records)
    after_crc = _AFTER_CRC.pack(0, n - 1, first_ts, max_ts, producer_id, producer_epoch, base_sequence, n) + body
    batch_length = HEADER_SIZE - LENGTH_PREFIX + len(body)
    return _HEAD.pack(0, batch_length, -1, MAGIC, zlib.crc32(after_crc)) + after_crc


def _encode_headers(headers: tuple[Header, ...]) -> bytes:
    out = [_U16.pack(len(headers))]
    for hkey, hval in headers:
        kb = hkey.encode()
        out.append(_U16.pack(len(kb)))
        out.append(kb)
        if hval is None:
            out.append(_NULL)
        else:
            out.append(_I32.pack(len(hval)))
            out.append(hval)
    return b"".join(out)
