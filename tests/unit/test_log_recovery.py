"""Recovery at open: whatever a crash leaves, the reopened log is a dense prefix of whole, CRC-valid batches.

A crash is simulated on real files: the log is written and closed (then stripped of its clean-shutdown marker, as if
close() had never run), then the bytes after the flushed ones are damaged
the ways a crash or power loss damages them (a tail cut at any byte, with or without the later segment files, a flipped
byte, garbage or zeros after the end), and the log is reopened. Zeros after the last batch are what a crash leaves
of the space reserved for appends: dropped like a torn tail, but not counted as truncated.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pi_broker.log import PartitionLog
from pi_broker.log.recovery import CLEAN_SHUTDOWN_MARKER
from pikafka.records import LENGTH_PREFIX, Record, encode_batch, iter_batches, stamp
from pikafka.topic_config import TopicConfig

SMALL = TopicConfig(segment_bytes=1024, index_interval_bytes=128)


def make_batch(i: int, records: int = 1, value_size: int = 20) -> bytes:
    return encode_batch(
        [Record(f"{i}:{j}:".encode().ljust(value_size, b"x"), timestamp_ms=1_000_000 + i) for j in range(records)],
        now_ms=1_000_000 + i,
    )


def fill(log: PartitionLog, count: int, records: int = 2, value_size: int = 30) -> list[bytes]:
    stored = []
    for i in range(count):
        batch = make_batch(i, records, value_size)
        result = log.append(batch, leader_epoch=1)
        stored.append(stamp(batch, result.base_offset, 1))
    return stored


def simulate_crash(log: PartitionLog) -> None:
    """Leave the files as a crash would: all that was written is in them, but close() never finished, so there is no
    clean-shutdown marker and the next open must CRC-check the last segment in full."""
    log.close()
    (log.directory / CLEAN_SHUTDOWN_MARKER).unlink()


def log_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def index_of(log_file: Path) -> Path:
    return log_file.with_suffix(".index")


def remove_segment(log_file: Path) -> None:
    log_file.unlink()
    index_of(log_file).unlink(missing_ok=True)


def check_reopened(directory: Path, expected: bytes, truncated: int) -> None:
    """The reopened log holds exactly `expected`, stays consistent, and keeps appending densely."""
    log = PartitionLog.open(directory, SMALL)
    headers = [h for h, _ in iter_batches(expected)]
    end = headers[-1].next_offset if headers else 0
    assert log.log_start_offset == 0
    assert (log.log_end_offset, log.flushed_offset) == (end, end)
    assert log.recovered_truncated_bytes == truncated
    assert log.size_bytes == len(expected)
    assert log.read(0, 10**9) == expected
    for header in headers:
        assert log.read(header.last_offset, 1) == log.read(header.base_offset, 1)
    more = make_batch(1000, records=2)
    assert log.append(more, leader_epoch=9).base_offset == end
    log.close()
    log = PartitionLog.open(directory, SMALL)  # and a clean reopen changes nothing
    assert log.recovered_truncated_bytes == 0
    assert log.read(0, 10**9) == expected + stamp(more, end, 9)
    log.close()


CRASHES = ["cut", "cut_keeping_later_segments", "flip_in_last_segment", "garbage_after_end", "zeros_after_end"]


@settings(max_examples=150, deadline=None)
@given(
    specs=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 300)), min_size=1, max_size=25),
    crash=st.sampled_from(CRASHES),
    data=st.data(),
)
def test_reopen_after_a_crash_at_any_byte_keeps_exactly_a_prefix(
    tmp_path_factory: pytest.TempPathFactory, specs: list[tuple[int, int]], crash: str, data: st.DataObject
) -> None:
    directory = tmp_path_factory.mktemp("crash")
    log = PartitionLog.open(directory, SMALL)
    flush_after = data.draw(st.integers(0, len(specs)), label="flush_after")
    stored: list[bytes] = []
    for i, (records, value_size) in enumerate(specs):
        if i == flush_after:
            log.flush()
            assert log.flushed_offset == log.log_end_offset
        batch = make_batch(i, records, value_size)
        stored.append(stamp(batch, log.append(batch, leader_epoch=1).base_offset, 1))
    simulate_crash(log)

    stream = bytearray(b"".join(stored))  # the segment files, concatenated, hold exactly these bytes
    ends = [sum(len(b) for b in stored[: i + 1]) for i in range(len(stored))]
    flushed = ends[flush_after - 1] if flush_after else 0
    files = log_files(directory)
    starts = [sum(f.stat().st_size for f in files[:i]) for i in range(len(files))]
    assert starts[-1] + files[-1].stat().st_size == len(stream)

    if crash.startswith("flip") and (files[-1].stat().st_size == 0 or max(flushed, starts[-1]) >= len(stream)):
        crash = "garbage_after_end"  # nothing unflushed in the last segment to flip
    reserved = 0  # bytes cut that are nothing but zeros: what recovery takes for reserved space, and does not count
    if crash.startswith("cut"):
        at = data.draw(st.integers(flushed, len(stream)), label="cut_at")
        k = max(i for i in range(len(files)) if starts[i] <= at)
        os.truncate(files[k], at - starts[k])
        if crash == "cut":
            for later in files[k + 1 :]:
                remove_segment(later)
        keep = max([e for e in ends if e <= at], default=0)
        if not any(stream[keep:at]):
            reserved = at - keep
    elif crash.startswith("flip"):
        at = data.draw(st.integers(max(flushed, starts[-1]), len(stream) - 1), label="flip_at")
        xor = data.draw(st.integers(1, 255), label="xor")
        with open(files[-1], "r+b") as f:
            f.seek(at - starts[-1])
            byte = f.read(1)[0]
            f.seek(at - starts[-1])
            f.write(bytes([byte ^ xor]))
        stream[at] ^= xor
        batch_start = max([0] + [e for e in ends if e <= at])
        # The leader epoch lies outside the CRC and is not checked by density: damage there goes unnoticed.
        in_epoch_field = LENGTH_PREFIX <= at - batch_start < LENGTH_PREFIX + 4
        keep = len(stream) if in_epoch_field else batch_start
    else:
        junk = data.draw(st.binary(min_size=1, max_size=200), label="junk") if crash == "garbage_after_end" else b""
        junk = junk or bytes(data.draw(st.integers(1, 5000), label="zeros"))
        with open(files[-1], "ab") as out:
            out.write(junk)
        keep = len(stream)
        if not any(junk):
            reserved = len(junk)
    on_disk = sum(f.stat().st_size for f in log_files(directory))
    event(f"{crash}, {'some' if on_disk > keep else 'nothing'} to cut, {'one' if len(files) == 1 else 'many'} segments")

    check_reopened(directory, bytes(stream[:keep]), truncated=on_disk - keep - reserved)


def test_a_torn_tail_is_logged_with_its_byte_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 3)
    simulate_crash(log)
    last = log_files(tmp_path)[-1]
    os.truncate(last, last.stat().st_size - 5)
    with caplog.at_level(logging.WARNING, logger="pi_broker.log"):
        check_reopened(tmp_path, b"".join(stored[:2]), truncated=len(stored[2]) - 5)
    assert any(f"cut {len(stored[2]) - 5} bytes" in r.getMessage() for r in caplog.records)


def test_corruption_in_an_older_segments_tail_cuts_there_and_deletes_later_segments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 40)
    simulate_crash(log)
    files = log_files(tmp_path)
    assert len(files) >= 4
    victim = files[1]
    victim_start = sum(f.stat().st_size for f in files[:1])
    with open(victim, "r+b") as f:  # the last byte of the segment: the tail a torn write would hit
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte ^ 0xFF]))
    ends = [sum(len(b) for b in stored[: i + 1]) for i in range(len(stored))]
    keep = max(e for e in ends if e < victim_start + victim.stat().st_size)
    with caplog.at_level(logging.ERROR, logger="pi_broker.log"):
        check_reopened(tmp_path, b"".join(stored)[:keep], truncated=sum(len(b) for b in stored) - keep)
    assert [f.name for f in log_files(tmp_path)] == [f.name for f in files[:2]]
    assert any("deleting segment" in r.getMessage() for r in caplog.records)


def test_mid_segment_corruption_is_found_when_the_index_is_missing(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 40)
    simulate_crash(log)
    files = log_files(tmp_path)
    with open(files[0], "r+b") as f:
        f.seek(len(stored[0]) + len(stored[1]) + 30)  # inside the third batch
        f.write(b"\xee")
    index_of(files[0]).unlink()
    check_reopened(tmp_path, b"".join(stored[:2]), truncated=sum(len(b) for b in stored[2:]))


def test_a_gap_between_segments_ends_the_log_there(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 40)
    simulate_crash(log)
    files = log_files(tmp_path)
    remove_segment(files[2])
    kept = files[0].stat().st_size + files[1].stat().st_size
    with caplog.at_level(logging.ERROR, logger="pi_broker.log"):
        check_reopened(tmp_path, b"".join(stored)[:kept], truncated=sum(f.stat().st_size for f in files[3:]))
    assert "does not continue the log" in caplog.text


@pytest.mark.parametrize("shutdown", ["clean", "crash"])
@pytest.mark.parametrize(
    "damage",
    ["deleted", "empty", "torn_entry", "garbage", "points_past_the_end", "decreasing", "wrong_offset", "stray_extra"],
)
def test_a_damaged_index_is_rebuilt(tmp_path: Path, damage: str, shutdown: str) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 60, records=1, value_size=10)
    if shutdown == "clean":
        log.close()
    else:
        simulate_crash(log)
    files = log_files(tmp_path)
    originals = {f: index_of(f).read_bytes() for f in files}
    assert all(len(data) >= 16 for data in list(originals.values())[:-1])  # older segments have index entries
    for f in files:  # damage every segment's index, older and active alike
        index = index_of(f)
        data = originals[f]
        if damage == "deleted":
            index.unlink()
        elif damage == "empty":
            index.write_bytes(b"")
        elif damage == "torn_entry":
            index.write_bytes(data + b"\x00\x00\x01")
        elif damage == "garbage":
            index.write_bytes(os.urandom(len(data)))
        elif damage == "points_past_the_end":
            index.write_bytes(data + (10**6).to_bytes(4, "big") + (10**6).to_bytes(4, "big"))
        elif damage == "decreasing":
            index.write_bytes(data[8:16] + data[:8] + data[16:])
        elif damage == "wrong_offset":  # well-formed, increasing, in range, but naming the wrong offset
            last_rel = int.from_bytes(data[-8:-4], "big")
            index.write_bytes(data[:-8] + (last_rel + 1).to_bytes(4, "big") + data[-4:])
        elif damage == "stray_extra":  # a plausible extra entry at a position that is not a batch start
            last_rel, last_pos = int.from_bytes(data[-8:-4], "big"), int.from_bytes(data[-4:], "big")
            index.write_bytes(data + (last_rel + 1).to_bytes(4, "big") + (last_pos + 3).to_bytes(4, "big"))
    check_reopened(tmp_path, b"".join(stored), truncated=0)
    for f in files[:-1]:  # rebuilt identically (the active one has since had a batch appended)
        assert index_of(f).read_bytes() == originals[f]


def test_rebuilt_index_serves_reads_from_every_offset(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 50)
    log.close()
    for f in log_files(tmp_path):
        index_of(f).unlink()
    log = PartitionLog.open(tmp_path, SMALL)
    for i, batch in enumerate(stored):
        assert log.read(2 * i, 1) == batch
        assert log.read(2 * i + 1, 1) == batch
    log.close()


def test_stray_index_files_are_removed_and_unknown_files_left_alone(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 10)
    log.close()
    stray = tmp_path / f"{10**9:020d}.index"
    stray.write_bytes(b"\x00" * 8)
    unknown = [tmp_path / "notes.txt", tmp_path / "00000000000000000000.log.bak", tmp_path / "123.log"]
    for path in unknown:
        path.write_bytes(b"keep me")
    check_reopened(tmp_path, b"".join(stored), truncated=0)
    assert not stray.exists()
    assert all(path.read_bytes() == b"keep me" for path in unknown)


def test_open_creates_missing_directories(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "topic-3"
    log = PartitionLog.open(directory, SMALL)
    fill(log, 2)
    log.close()
    assert log_files(directory)


def test_an_emptied_first_segment_leaves_an_empty_log(tmp_path: Path) -> None:
    """Nothing of the first segment reached the disk: later segments would follow a hole, so they go too."""
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 40)
    simulate_crash(log)
    files = log_files(tmp_path)
    os.truncate(files[0], 0)
    check_reopened(tmp_path, b"", truncated=sum(f.stat().st_size for f in files[1:]))


def test_a_clean_shutdown_is_marked_and_the_mark_is_gone_once_reopened(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 30)
    log.close()
    marker = tmp_path / CLEAN_SHUTDOWN_MARKER
    assert marker.exists()
    log = PartitionLog.open(tmp_path, SMALL)
    assert not marker.exists()  # a crash from now on gets the full check
    assert log.read(0, 10**9) == b"".join(stored)
    assert log.flushed_offset == log.log_end_offset == 60
    log.close()


def test_a_torn_tail_is_cut_even_when_a_clean_shutdown_was_marked(tmp_path: Path) -> None:
    """The marked open skips the full CRC scan, not the tail check: a tail damaged later is still found."""
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 30)
    log.close()
    last = log_files(tmp_path)[-1]
    with open(last, "ab") as out:
        out.write(b"\xee" * 100)
    check_reopened(tmp_path, b"".join(stored), truncated=100)
    log.close()
