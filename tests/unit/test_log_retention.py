"""Retention: whole old segments go by size and by age, never the active one; the log start moves past them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pi_broker.log import PartitionLog
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import Record, encode_batch, iter_batches
from pikafka.topic_config import TopicConfig

DAY_MS = 24 * 3600 * 1000
KEEP_ALL = TopicConfig(segment_bytes=1024, index_interval_bytes=128, retention_ms=-1, retention_bytes=-1)


def append_at(log: PartitionLog, ts: int, count: int = 1) -> None:
    for _ in range(count):
        log.append(encode_batch([Record(b"r" * 100, timestamp_ms=ts)], now_ms=ts), leader_epoch=0)


def segment_bases(directory: Path) -> list[int]:
    return sorted(int(p.name.removesuffix(".log")) for p in directory.glob("*.log"))


def segment_sizes(directory: Path) -> list[int]:
    return [p.stat().st_size for p in sorted(directory.glob("*.log"))]


def test_nothing_goes_when_retention_is_unlimited(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, KEEP_ALL)
    append_at(log, ts=0, count=50)
    assert log.apply_retention(now_ms=100 * 365 * DAY_MS) == 0
    assert log.log_start_offset == 0
    log.close()


def test_retention_by_bytes_deletes_oldest_segments_while_the_rest_still_meet_the_limit(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, KEEP_ALL)
    append_at(log, ts=0, count=60)
    log.close()  # and reopened: the files are then exactly their batches, without the space reserved for appends
    log = PartitionLog.open(tmp_path, KEEP_ALL)
    sizes = segment_sizes(tmp_path)
    assert len(sizes) > 6
    log.config = TopicConfig(segment_bytes=1024, index_interval_bytes=128, retention_ms=-1, retention_bytes=3000)
    deleted = log.apply_retention(now_ms=0)
    expected = 0
    while sum(sizes[expected + 1 :]) >= 3000:
        expected += 1
    assert deleted == expected > 0
    assert log.size_bytes == sum(sizes[expected:]) == sum(segment_sizes(tmp_path))
    assert log.size_bytes >= 3000 > log.size_bytes - segment_sizes(tmp_path)[0]
    assert log.log_start_offset == segment_bases(tmp_path)[0] > 0
    assert log.apply_retention(now_ms=0) == 0  # stable
    log.close()


def test_retention_never_deletes_the_active_segment(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, KEEP_ALL)
    append_at(log, ts=0, count=30)
    end = log.log_end_offset
    log.config = TopicConfig(segment_bytes=1024, index_interval_bytes=128, retention_ms=1, retention_bytes=1)
    assert log.apply_retention(now_ms=10 * DAY_MS) > 0
    assert len(segment_bases(tmp_path)) == 1
    assert log.log_end_offset == end
    assert log.log_start_offset == segment_bases(tmp_path)[0]
    assert log.read(log.log_start_offset, 10**6)
    log.close()


def test_retention_by_age_uses_each_segments_newest_record(tmp_path: Path) -> None:
    config = TopicConfig(segment_bytes=1024, index_interval_bytes=128, retention_ms=DAY_MS, retention_bytes=-1)
    log = PartitionLog.open(tmp_path, config)
    for day in range(10):
        append_at(log, ts=day * DAY_MS, count=8)  # 8 x 162 bytes: more than a segment per day
    first_of_day: dict[int, int] = {}
    for header, _ in iter_batches(log.read(0, 10**9)):
        first_of_day.setdefault(header.max_timestamp // DAY_MS, header.base_offset)

    # At day 5.5, records of day 4 and older are past retention; a segment goes once its newest record is.
    deleted = log.apply_retention(now_ms=5 * DAY_MS + DAY_MS // 2)
    assert deleted > 0
    start = log.log_start_offset
    assert first_of_day[4] < start <= first_of_day[5]  # the segment spanning days 4 and 5 stays
    with pytest.raises(PikafkaError) as err:
        log.read(start - 1, 100)
    assert err.value.code is ErrorCode.OFFSET_OUT_OF_RANGE
    assert [h.base_offset for h, _ in iter_batches(log.read(start, 1))] == [start]
    log.close()


def test_age_retention_works_after_reopen(tmp_path: Path) -> None:
    config = TopicConfig(segment_bytes=1024, index_interval_bytes=128, retention_ms=DAY_MS, retention_bytes=-1)
    log = PartitionLog.open(tmp_path, config)
    append_at(log, ts=0, count=20)
    append_at(log, ts=3 * DAY_MS, count=20)
    log.close()
    log = PartitionLog.open(tmp_path, config)
    assert log.apply_retention(now_ms=2 * DAY_MS) > 0
    assert log.apply_retention(now_ms=2 * DAY_MS) == 0
    for header, _ in iter_batches(log.read(log.log_start_offset, 10**9)):
        assert header.max_timestamp in (0, 3 * DAY_MS)
    assert log.log_start_offset == segment_bases(tmp_path)[0]
    log.close()


def test_retention_stops_at_the_first_segment_it_must_keep(tmp_path: Path) -> None:
    """Only a prefix goes, so the log stays a dense range even when a later segment is older by its timestamps."""
    config = TopicConfig(segment_bytes=1024, index_interval_bytes=128, retention_ms=DAY_MS, retention_bytes=-1)
    log = PartitionLog.open(tmp_path, config)
    append_at(log, ts=10 * DAY_MS, count=8)  # first segment(s): new
    append_at(log, ts=0, count=20)  # later segments: old timestamps (a sensor with a reset clock)
    assert log.apply_retention(now_ms=10 * DAY_MS) == 0
    assert log.log_start_offset == 0
    log.close()


def test_reopen_after_retention_starts_at_the_first_remaining_segment(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, KEEP_ALL)
    append_at(log, ts=0, count=40)
    log.config = TopicConfig(segment_bytes=1024, index_interval_bytes=128, retention_ms=-1, retention_bytes=2000)
    log.apply_retention(now_ms=0)
    start, end, data = log.log_start_offset, log.log_end_offset, log.read(log.log_start_offset, 10**9)
    log.close()
    log = PartitionLog.open(tmp_path, KEEP_ALL)
    assert (log.log_start_offset, log.log_end_offset) == (start, end)
    assert log.read(start, 10**9) == data
    with pytest.raises(PikafkaError):
        log.read(0, 100)
    log.close()


def test_retention_of_segments_not_yet_flushed_keeps_flushing_working(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, KEEP_ALL)
    append_at(log, ts=0, count=40)  # rolled several times, nothing fsynced yet
    ticket = log.flush_ticket()
    log.config = TopicConfig(segment_bytes=1024, index_interval_bytes=128, retention_ms=-1, retention_bytes=1)
    assert log.apply_retention(now_ms=0) > 0
    PartitionLog.fsync(ticket)  # the ticket's own descriptors outlive the deleted segments
    log.complete_flush(ticket)
    assert log.flushed_offset == log.log_end_offset
    log.close()
