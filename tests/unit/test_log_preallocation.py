"""Space reserved ahead of the appends: there while a segment takes appends, gone once it rolls or the log closes, and
dropped by recovery, without counting as truncated and without ending the log, when a crash leaves it behind."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from pi_broker.log import PartitionLog
from pi_broker.log.recovery import CLEAN_SHUTDOWN_MARKER
from pi_broker.log.segment import RESERVE_BYTES
from pikafka.records import Record, encode_batch, stamp
from pikafka.topic_config import TopicConfig

ROLLING = TopicConfig(segment_bytes=4096, index_interval_bytes=512)


def fill(log: PartitionLog, count: int, first: int = 0) -> list[bytes]:
    stored = []
    for i in range(first, first + count):
        batch = encode_batch([Record(f"{i}:".encode().ljust(120, b"v"), timestamp_ms=1_000 + i)], now_ms=1_000 + i)
        stored.append(stamp(batch, log.append(batch, leader_epoch=2).base_offset, 2))
    return stored


def log_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def test_the_active_segment_reaches_past_its_batches_and_rolled_or_closed_ones_do_not(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "big", TopicConfig())
    stored = fill(log, 10)
    # Reserved by the first append, a MiB past its batch; the next ones write into that space.
    assert log_files(tmp_path / "big")[0].stat().st_size == len(stored[0]) + RESERVE_BYTES
    assert log.read(0, 10**6) == b"".join(stored)  # reads stop at the batches, not at the file's end
    log.close()
    assert log_files(tmp_path / "big")[0].stat().st_size == sum(len(b) for b in stored)

    log = PartitionLog.open(tmp_path / "rolling", ROLLING)
    stored = fill(log, 100)
    *rolled, active = log_files(tmp_path / "rolling")
    assert rolled
    assert active.stat().st_size == ROLLING.segment_bytes  # never reserved past the size it rolls at
    data = b"".join(path.read_bytes() for path in rolled)
    assert data == b"".join(stored)[: len(data)]  # rolled segments are exactly their batches
    log.close()
    assert b"".join(path.read_bytes() for path in log_files(tmp_path / "rolling")) == b"".join(stored)


def test_reserved_space_a_crash_leaves_is_dropped_and_not_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = PartitionLog.open(tmp_path / "live", TopicConfig())
    stored = fill(log, 20)
    log.flush()
    # The files as a power cut would leave them, flushed, with the reserved zeros after the last batch.
    shutil.copytree(tmp_path / "live", tmp_path / "crashed")
    log.close()
    (segment,) = log_files(tmp_path / "crashed")
    reserved = segment.stat().st_size - sum(len(b) for b in stored)
    assert reserved > 0
    with caplog.at_level(logging.INFO, logger="pi_broker.log"):
        reopened = PartitionLog.open(tmp_path / "crashed", TopicConfig())
    assert reopened.recovered_truncated_bytes == 0
    assert f"dropped {reserved} bytes of space reserved" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert reopened.read(0, 10**6) == b"".join(stored)
    more = fill(reopened, 1, first=20)
    assert reopened.read(0, 10**6) == b"".join(stored + more)
    reopened.close()
    assert segment.stat().st_size == sum(len(b) for b in stored + more)


def test_reserved_space_left_in_an_older_segment_does_not_end_the_log(tmp_path: Path) -> None:
    """A crash after a roll, before the sync that made the rolled segment's cut durable: zeros after its batches."""
    log = PartitionLog.open(tmp_path, ROLLING)
    stored = fill(log, 100)
    log.close()
    (tmp_path / CLEAN_SHUTDOWN_MARKER).unlink()
    files = log_files(tmp_path)
    assert len(files) >= 3
    os.truncate(files[1], ROLLING.segment_bytes + 300)
    reopened = PartitionLog.open(tmp_path, ROLLING)
    assert reopened.recovered_truncated_bytes == 0
    assert log_files(tmp_path) == files
    assert reopened.read(0, 10**6) == b"".join(stored)
    assert reopened.log_end_offset == reopened.flushed_offset == 100
    reopened.close()


def test_a_batch_lost_under_the_zeros_of_an_older_segment_still_ends_the_log_there(tmp_path: Path) -> None:
    """Zeros where the rolled segment's last batch should be: it never reached the disk, so the segment after it no
    longer continues the log, and goes, as after any other gap."""
    log = PartitionLog.open(tmp_path, ROLLING)
    stored = fill(log, 100)
    log.close()
    (tmp_path / CLEAN_SHUTDOWN_MARKER).unlink()
    files = log_files(tmp_path)
    first_size = files[0].stat().st_size
    second_size = files[1].stat().st_size
    kept = first_size + second_size - len(stored[0])  # all batches are the same size: the second's last one is lost
    os.truncate(files[1], second_size - len(stored[0]))
    os.truncate(files[1], ROLLING.segment_bytes)  # its place, and more, reads as zeros
    reopened = PartitionLog.open(tmp_path, ROLLING)
    assert reopened.read(0, 10**6) == b"".join(stored)[:kept]
    assert log_files(tmp_path) == files[:2]
    # Counted: the segments deleted; the lost batch's place held zeros, nothing of it to cut.
    assert reopened.recovered_truncated_bytes == sum(len(b) for b in stored) - kept - len(stored[0])
    reopened.close()
