"""PartitionLog appends and reads: segment rolls, index lookups, fetch bounds, offset range, reopening."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_broker.log import AppendResult, PartitionLog
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import CorruptBatchError, Record, encode_batch, iter_batches, stamp
from pikafka.topic_config import TopicConfig

SMALL = TopicConfig(segment_bytes=1024, index_interval_bytes=128)


def make_batch(i: int, records: int = 1, value_size: int = 20, ts: int | None = None) -> bytes:
    stamp_ms = 1_000_000 + i if ts is None else ts
    return encode_batch(
        [Record(f"{i}:{j}:".encode().ljust(value_size, b"x"), timestamp_ms=stamp_ms) for j in range(records)],
        now_ms=stamp_ms,
    )


def fill(log: PartitionLog, count: int, records: int = 2, value_size: int = 30) -> list[bytes]:
    """Append count batches; returns each as stored (stamped)."""
    stored = []
    for i in range(count):
        batch = make_batch(i, records, value_size)
        result = log.append(batch, leader_epoch=3)
        stored.append(stamp(batch, result.base_offset, 3))
    return stored


def bases(data: bytes) -> list[int]:
    return [header.base_offset for header, _ in iter_batches(data)]


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.log"))


def test_a_new_log_is_empty(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "t-0", SMALL)
    assert (log.log_start_offset, log.log_end_offset, log.flushed_offset, log.size_bytes) == (0, 0, 0, 0)
    assert log.recovered_truncated_bytes == 0
    assert log.read(0, 1000) == b""
    assert log.read_last_batch() is None
    assert list(log.recent_batch_headers()) == []
    assert segment_files(tmp_path / "t-0") == ["00000000000000000000.log"]
    log.close()


def test_append_assigns_dense_offsets_and_stamps_epoch(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    assert log.append(make_batch(0, records=3), leader_epoch=7) == AppendResult(0, 2)
    assert log.append(make_batch(1, records=1), leader_epoch=8) == AppendResult(3, 3)
    assert log.log_end_offset == 4
    headers = [h for h, _ in iter_batches(log.read(0, 10_000))]
    assert [(h.base_offset, h.leader_epoch, h.record_count) for h in headers] == [(0, 7, 3), (3, 8, 1)]
    log.close()


def test_round_trip_across_segment_rolls(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 60)
    assert log.read(0, 10**9) == b"".join(stored)
    assert log.size_bytes == sum(len(b) for b in stored)
    log.close()  # which cuts the active segment's reserved space off
    files = segment_files(tmp_path)
    assert len(files) > 5
    # Every segment is named by the base offset of its first batch and none exceeds segment_bytes.
    for name in files:
        assert (tmp_path / name).stat().st_size <= SMALL.segment_bytes
        data = (tmp_path / name).read_bytes()
        assert bases(data)[0] == int(name.removesuffix(".log"))


def test_a_batch_bigger_than_segment_bytes_gets_its_own_segment(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 2)
    big = make_batch(99, records=1, value_size=3000)
    result = log.append(big, leader_epoch=0)
    fill(log, 1)
    assert segment_files(tmp_path)[1:] == [f"{result.base_offset:020d}.log", f"{result.base_offset + 1:020d}.log"]
    assert bases(log.read(result.base_offset, 1)) == [result.base_offset]
    log.close()


def test_reading_from_every_offset_starts_with_the_batch_containing_it(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = []
    for i in range(80):
        batch = make_batch(i, records=1 + i % 4, value_size=10 + (i * 7) % 50)
        result = log.append(batch, leader_epoch=0)
        stored.append((result.base_offset, result.last_offset, stamp(batch, result.base_offset, 0)))
    for base, last, data in stored:
        for offset in range(base, last + 1):
            assert log.read(offset, 1) == data
    log.close()


def test_max_bytes_stops_before_the_batch_that_would_exceed_it(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 30)
    size = len(stored[0])
    assert all(len(b) == size for b in stored)
    assert bases(log.read(0, 3 * size)) == [0, 2, 4]
    assert bases(log.read(0, 3 * size + size - 1)) == [0, 2, 4]
    assert bases(log.read(0, 1)) == [0]  # the first batch comes even when bigger than max_bytes
    assert bases(log.read(0, 0)) == [0]
    # Across a segment boundary, too.
    assert log.read(0, 30 * size) == b"".join(stored)
    log.close()


def test_max_records_stops_once_reached(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 20, records=3)
    assert bases(log.read(0, 10**6, max_records=1)) == [0]
    assert bases(log.read(0, 10**6, max_records=3)) == [0]
    assert bases(log.read(0, 10**6, max_records=4)) == [0, 3]
    assert bases(log.read(4, 10**6, max_records=4)) == [3, 6]
    log.close()


def test_max_offset_only_returns_batches_ending_at_or_below_it(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 20, records=3)
    assert bases(log.read(0, 10**6, max_offset=9)) == [0, 3, 6]
    assert bases(log.read(0, 10**6, max_offset=8)) == [0, 3]  # the batch 6..8 ends at 9, past 8
    assert log.read(6, 10**6, max_offset=8) == b""
    assert log.read(9, 10**6, max_offset=9) == b""
    assert log.read(9, 10**6, max_offset=3) == b""
    assert bases(log.read(0, 10**6, max_offset=10**9)) == list(range(0, 60, 3))
    log.close()


def test_reading_at_the_log_end_returns_nothing(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 5)
    assert log.read(log.log_end_offset, 10**6) == b""
    log.close()


@pytest.mark.parametrize("offset", [-1, 11, 10**12])
def test_offsets_outside_the_log_are_out_of_range(tmp_path: Path, offset: int) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 5)
    with pytest.raises(PikafkaError) as err:
        log.read(offset, 100)
    assert err.value.code is ErrorCode.OFFSET_OUT_OF_RANGE
    assert "outside [0, 10]" in str(err.value)
    log.close()


def test_reopen_keeps_everything_and_continues_the_offsets(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 40)
    end = log.log_end_offset
    log.close()
    log = PartitionLog.open(tmp_path, SMALL)
    assert log.recovered_truncated_bytes == 0
    assert (log.log_end_offset, log.flushed_offset) == (end, end)
    assert log.read(0, 10**9) == b"".join(stored)
    assert log.append(make_batch(100), leader_epoch=4).base_offset == end
    for offset in range(0, end, 3):
        assert bases(log.read(offset, 1)) == [offset - offset % 2]
    log.close()


def test_read_last_batch(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    stored = fill(log, 30, records=2)
    assert log.read_last_batch() == stored[-1]
    assert log.read_last_batch(max_offset=10) == stored[4]
    assert log.read_last_batch(max_offset=11) == stored[4]  # the batch 10..11 ends at 12
    assert log.read_last_batch(max_offset=2) == stored[0]
    assert log.read_last_batch(max_offset=1) is None
    assert log.read_last_batch(max_offset=0) is None
    log.close()


def test_recent_batch_headers_cover_the_newest_segments_in_order(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 50)
    files = segment_files(tmp_path)
    second_newest = int(files[-2].removesuffix(".log"))
    headers = log.recent_batch_headers(max_segments=2)
    assert [h.base_offset for h in headers] == list(range(second_newest, log.log_end_offset, 2))
    assert [h.base_offset for h in log.recent_batch_headers(max_segments=100)] == list(range(0, 100, 2))
    log.close()


def test_recent_batch_headers_can_skip_batches_without_a_producer(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    for i in range(30):
        producer = {"producer_id": 77, "producer_epoch": 0, "base_sequence": i} if i % 3 == 0 else {}
        log.append(encode_batch([Record(b"v" * 50)], now_ms=1, **producer), leader_epoch=0)
    headers = list(log.recent_batch_headers(max_segments=100, producers_only=True))
    assert [(h.base_offset, h.producer_id, h.base_sequence) for h in headers] == [(i, 77, i) for i in range(0, 30, 3)]
    assert len(list(log.recent_batch_headers(max_segments=100))) == 30
    log.close()


def test_append_replica_requires_the_log_end_offset(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 2)
    with pytest.raises(ValueError):
        log.append_replica(stamp(make_batch(5), 3, 1))
    replica_batch = stamp(make_batch(5, records=2), 4, 9)
    assert log.append_replica(replica_batch) == AppendResult(4, 5)
    assert log.read(4, 10**6) == replica_batch
    damaged = bytearray(stamp(make_batch(6), 6, 9))
    damaged[-1] ^= 1
    with pytest.raises(CorruptBatchError):
        log.append_replica(bytes(damaged))
    assert log.log_end_offset == 6
    log.close()


def test_append_rejects_anything_but_one_whole_batch(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    with pytest.raises(ValueError):
        log.append(make_batch(0) + make_batch(1), leader_epoch=0)
    with pytest.raises(ValueError):
        log.append(make_batch(0)[:-1], leader_epoch=0)
    assert log.log_end_offset == 0
    log.close()


def test_a_replaced_config_applies_to_later_rolls(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, TopicConfig())
    fill(log, 30)
    assert len(segment_files(tmp_path)) == 1
    log.config = SMALL
    fill(log, 30)
    assert len(segment_files(tmp_path)) > 3
    log.close()


def test_closed_log_refuses_work(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 3)
    log.close()
    log.close()  # idempotent
    with pytest.raises(PikafkaError) as err:
        log.read(0, 100)
    assert err.value.code is ErrorCode.STORAGE_ERROR


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 400)), min_size=1, max_size=40),
    data=st.data(),
)
def test_any_read_returns_whole_batches_within_its_bounds(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[tuple[int, int]], data: st.DataObject
) -> None:
    log = PartitionLog.open(tmp_path_factory.mktemp("log"), SMALL)
    stored = []
    for i, (records, value_size) in enumerate(sizes):
        batch = make_batch(i, records, value_size)
        result = log.append(batch, leader_epoch=0)
        stored.append((result.base_offset, stamp(batch, result.base_offset, 0)))
    end = log.log_end_offset
    offset = data.draw(st.integers(0, end), label="offset")
    max_bytes = data.draw(st.integers(0, 5000), label="max_bytes")
    max_offset = data.draw(st.none() | st.integers(0, end + 3), label="max_offset")
    max_records = data.draw(st.none() | st.integers(1, 12), label="max_records")

    got = log.read(offset, max_bytes, max_offset=max_offset, max_records=max_records)

    limit = end if max_offset is None else min(max_offset, end)
    expected: list[bytes] = []
    total = records = 0
    for base, batch in stored:
        next_offset = next(iter_batches(batch))[0].next_offset
        if next_offset <= offset:
            continue
        if next_offset > limit or (expected and total + len(batch) > max_bytes):
            break
        expected.append(batch)
        total += len(batch)
        records += next_offset - base
        if max_records is not None and records >= max_records:
            break
    assert got == b"".join(expected)
    log.close()


def test_a_lazily_consumed_header_walk_survives_reads_in_between(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    fill(log, 80)
    headers = log.recent_batch_headers(max_segments=100)
    first = [next(headers).base_offset for _ in range(3)]
    for offset in range(0, log.log_end_offset, 3):  # churns the read descriptors of every segment
        log.read(offset, 1)
    log.append(make_batch(999), leader_epoch=3)  # lazily read: a segment not reached yet shows it too
    assert first + [h.base_offset for h in headers] == [*range(0, 160, 2), 160]
    log.close()
