"""The storage's fast header walk agrees with the record format's own parser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_broker.log.batch_walk import SegmentCorruption, span_at, walk_batches
from pikafka.records import HEADER_SIZE, CorruptBatchError, Record, encode_batch, parse_header, stamp


@settings(max_examples=300, deadline=None)
@given(
    records=st.integers(1, 5),
    base_offset=st.integers(0, 2**40),
    position=st.integers(0, HEADER_SIZE - 1),
    xor=st.integers(0, 255),
)
def test_span_at_accepts_and_rejects_exactly_what_parse_header_does(
    records: int, base_offset: int, position: int, xor: int
) -> None:
    batch = bytearray(stamp(encode_batch([Record(b"v", timestamp_ms=5)] * records, now_ms=5), base_offset, 1))
    batch[position] ^= xor
    try:
        header = parse_header(batch)
    except CorruptBatchError:
        with pytest.raises(SegmentCorruption):
            span_at(batch)
        return
    span, crc = span_at(batch, 0, 1000)
    assert crc == header.crc
    assert (span.position, span.base_offset, span.size, span.next_offset, span.last_offset) == (
        1000,
        header.base_offset,
        header.size,
        header.next_offset,
        header.last_offset,
    )
    assert (span.max_timestamp, span.record_count, span.end) == (
        header.max_timestamp,
        header.record_count,
        1000 + header.size,
    )


def test_walk_reads_big_batches_across_windows(tmp_path: Path) -> None:
    batches = [
        stamp(encode_batch([Record(os.urandom(size))]), i, 0) for i, size in enumerate([10, 40_000, 7, 70_000, 3])
    ]
    path = tmp_path / "seg"
    path.write_bytes(b"".join(batches))
    fd = os.open(path, os.O_RDONLY)
    try:
        spans = list(walk_batches(fd, 0, path.stat().st_size, expected_offset=0, verify_crc=True))
        assert [s.size for s in spans] == [len(b) for b in batches]
        assert [s.base_offset for s in spans] == [0, 1, 2, 3, 4]
        with pytest.raises(SegmentCorruption) as err:
            list(walk_batches(fd, 0, path.stat().st_size, expected_offset=1, verify_crc=False))
        assert err.value.position == 0
    finally:
        os.close(fd)
