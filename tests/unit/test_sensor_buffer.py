"""The store-and-forward buffer: order, the bound (oldest dropped and counted), torn tails, the cursor."""

from __future__ import annotations

import os
from pathlib import Path

from clients.sensor.disk_buffer import DiskBuffer


def filled(tmp_path: Path, n: int, **kwargs) -> DiskBuffer:
    buffer = DiskBuffer(tmp_path / "buf", **kwargs)
    buffer.open()
    for i in range(n):
        buffer.append(b"dev/load", b"reading-%d" % i)
    return buffer


def test_reads_back_in_order_across_segments(tmp_path):
    buffer = filled(tmp_path, 500, max_bytes=1 << 20, segment_bytes=1024)
    got = []
    seq = 0
    while True:
        batch = buffer.read(seq, 37)
        if not batch:
            break
        got.extend(batch)
        seq = batch[-1][0] + 1
    assert [s for s, _, _ in got] == list(range(500))
    assert got[123] == (123, b"dev/load", b"reading-123")


def test_bound_drops_the_oldest_and_counts_them(tmp_path):
    buffer = filled(tmp_path, 2000, max_bytes=8192, segment_bytes=2048)
    assert buffer.dropped > 0
    assert buffer.size_bytes <= 8192
    kept = buffer.read(0, 10_000)
    seqs = [s for s, _, _ in kept]
    # What is left is the newest readings, contiguous up to the last one.
    assert seqs == list(range(seqs[0], 2000))
    assert buffer.dropped == seqs[0] == buffer.cursor
    assert buffer.pending == len(seqs)


def test_delivered_readings_are_not_counted_as_dropped(tmp_path):
    buffer = DiskBuffer(tmp_path / "buf", max_bytes=8192, segment_bytes=2048)
    buffer.open()
    for i in range(2000):
        seq = buffer.append(b"k", b"reading-%d" % i)
        buffer.acknowledge(seq + 1)  # a broker is there: every reading delivered at once
    assert buffer.dropped == 0
    assert buffer.pending == 0


def test_reopen_resumes_at_the_saved_cursor(tmp_path):
    buffer = filled(tmp_path, 100, segment_bytes=1024)
    buffer.acknowledge(60)
    buffer.close()
    again = DiskBuffer(tmp_path / "buf", segment_bytes=1024)
    again.open()
    assert again.cursor == 60
    assert [s for s, _, _ in again.read(again.cursor, 1000)] == list(range(60, 100))
    assert again.append(b"k", b"v") == 100


def test_torn_tail_is_cut_at_open(tmp_path):
    buffer = filled(tmp_path, 10)
    buffer.close()
    segment = sorted((tmp_path / "buf").glob("*.buf"))[-1]
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - 3)  # a power cut in the middle of the last frame
    again = DiskBuffer(tmp_path / "buf")
    again.open()
    assert [s for s, _, _ in again.read(0, 100)] == list(range(9))
    assert again.append(b"k", b"after") == 9


def test_corrupt_frame_is_cut_with_everything_after_it(tmp_path):
    buffer = filled(tmp_path, 10)
    buffer.close()
    segment = sorted((tmp_path / "buf").glob("*.buf"))[-1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    again = DiskBuffer(tmp_path / "buf")
    again.open()
    seqs = [s for s, _, _ in again.read(0, 100)]
    assert seqs == list(range(len(seqs))) and len(seqs) < 10


def test_flush_writes_cursor_and_fsyncs(tmp_path):
    buffer = filled(tmp_path, 5)
    buffer.acknowledge(3)
    buffer.flush()
    assert (tmp_path / "buf" / "cursor").read_text().strip() == "3"
    assert os.path.getsize(sorted((tmp_path / "buf").glob("*.buf"))[-1]) > 0
