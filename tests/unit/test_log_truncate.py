"""truncate_to (replication's log cut) and delete (topic deletion)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pi_broker.log import PartitionLog
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import Record, encode_batch, iter_batches, stamp
from pikafka.topic_config import TopicConfig

SMALL = TopicConfig(segment_bytes=1024, index_interval_bytes=128)


def fill(log: PartitionLog, count: int, records: int = 2) -> list[bytes]:
    stored = []
    for i in range(count):
        raw = encode_batch([Record(f"{i}".encode().ljust(40, b"-"), timestamp_ms=i)] * records, now_ms=i)
        stored.append(stamp(raw, log.append(raw, leader_epoch=2).base_offset, 2))
    return stored


def segment_bases(directory: Path) -> list[int]:
    return sorted(int(p.name.removesuffix(".log")) for p in directory.glob("*.log"))


def test_truncate_inside_an_older_segment_drops_everything_from_there(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 60)
    bases = segment_bases(tmp_path)
    cut = bases[2] + 4  # a batch boundary inside the third segment
    log.truncate_to(cut)
    assert segment_bases(tmp_path) == bases[:3]
    assert log.log_end_offset == cut
    assert log.flushed_offset == cut
    assert log.size_bytes == sum(len(b) for b in stored[: cut // 2])
    assert log.read(0, 10**9) == b"".join(stored[: cut // 2])
    with pytest.raises(PikafkaError) as err:
        log.read(cut + 2, 10)
    assert err.value.code is ErrorCode.OFFSET_OUT_OF_RANGE
    more = fill(log, 30)
    assert [h.base_offset for h, _ in iter_batches(b"".join(more))] == list(range(cut, cut + 60, 2))
    assert log.read(0, 10**9) == b"".join(stored[: cut // 2] + more)
    log.close()
    log = PartitionLog.open(tmp_path, SMALL)
    assert log.recovered_truncated_bytes == 0
    assert log.read(0, 10**9) == b"".join(stored[: cut // 2] + more)
    log.close()


def test_truncate_at_a_segment_boundary_makes_the_previous_segment_active(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 60)
    bases = segment_bases(tmp_path)
    log.truncate_to(bases[3])
    assert segment_bases(tmp_path) == bases[:3]
    assert log.log_end_offset == bases[3]
    more = fill(log, 5)
    assert log.read(0, 10**9) == b"".join(stored[: bases[3] // 2] + more)
    log.close()


def test_truncate_to_the_log_start_empties_the_log(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 60)
    log.config = TopicConfig(segment_bytes=1024, index_interval_bytes=128, retention_bytes=2000)
    log.apply_retention(now_ms=0)
    start = log.log_start_offset
    assert start > 0
    log.truncate_to(start)
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes) == (start, start, 0)
    assert log.read(start, 100) == b""
    assert fill(log, 1) and log.log_end_offset == start + 2
    log.close()


def test_truncate_refuses_offsets_inside_a_batch_or_outside_the_log(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 10)
    for offset in (3, -1, 21):
        with pytest.raises(ValueError):
            log.truncate_to(offset)
    log.truncate_to(20)  # the log end: nothing to do
    assert log.read(0, 10**9) == b"".join(stored)
    log.close()


def test_truncate_rewrites_the_index_without_stale_entries(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, TopicConfig(index_interval_bytes=128))
    stored = fill(log, 40)
    index = next(tmp_path.glob("*.index"))
    entries_before = len(index.read_bytes()) // 8
    log.truncate_to(40)
    entries_after = len(index.read_bytes()) // 8
    assert 0 < entries_after < entries_before
    for offset in range(0, 40):
        assert log.read(offset, 1) == stored[offset // 2]
    log.close()


def test_delete_removes_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "topic-0"
    log = PartitionLog.open(directory, SMALL)
    fill(log, 30)
    log.delete()
    assert not directory.exists()
    assert tmp_path.exists()
    with pytest.raises(PikafkaError) as err:
        log.append(encode_batch([Record(b"x")]), leader_epoch=0)
    assert err.value.code is ErrorCode.STORAGE_ERROR
