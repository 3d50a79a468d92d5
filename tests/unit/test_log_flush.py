"""Group-commit flushing (flush_ticket / fsync / complete_flush), descriptor economy and failed writes."""

from __future__ import annotations

import os
import resource
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pi_broker.log import FlushTicket, PartitionLog, preallocation
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import Record, encode_batch, stamp
from pikafka.topic_config import TopicConfig

SMALL = TopicConfig(segment_bytes=1024, index_interval_bytes=128)


def batch(i: int = 0, size: int = 100) -> bytes:
    return encode_batch([Record(str(i).encode().ljust(size, b"."), timestamp_ms=i)], now_ms=i)


def open_fds_under(directory: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def test_flushed_offset_advances_to_the_tickets_end_only(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    assert log.flushed_offset == 0
    for i in range(5):
        log.append(batch(i), leader_epoch=0)
    assert log.flushed_offset == 0
    ticket = log.flush_ticket()
    assert ticket.end_offset == 5
    for i in range(5, 8):
        log.append(batch(i), leader_epoch=0)  # appends continue while the ticket is synced
    PartitionLog.fsync(ticket)
    log.complete_flush(ticket)
    assert (log.flushed_offset, log.log_end_offset) == (5, 8)
    log.flush()
    assert log.flushed_offset == 8
    log.close()


def test_a_ticket_counts_the_bytes_appended_since_the_previous_ticket(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    tickets = [log.flush_ticket()]
    sizes = [len(batch(i, 300)) for i in range(5)]
    for i in range(5):
        log.append(batch(i, 300), leader_epoch=0)  # 1024-byte segments: these roll, and the count goes on
    tickets.append(log.flush_ticket())
    log.append(batch(5, 300), leader_epoch=0)
    tickets.append(log.flush_ticket())
    tickets.append(log.flush_ticket())
    assert [t.written_bytes for t in tickets] == [0, sum(sizes), sizes[0], 0]
    for ticket in tickets:
        PartitionLog.fsync(ticket)
        log.complete_flush(ticket)
    log.close()


def test_tickets_completed_out_of_order_never_move_flushed_offset_back(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    log.append(batch(), leader_epoch=0)
    first = log.flush_ticket()
    log.append(batch(), leader_epoch=0)
    second = log.flush_ticket()
    PartitionLog.fsync(second)
    PartitionLog.fsync(first)
    log.complete_flush(second)
    log.complete_flush(first)
    assert log.flushed_offset == 2
    log.close()


def test_fsync_on_a_worker_thread_while_the_log_appends_and_rolls(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    for round_ in range(20):
        for i in range(7):
            log.append(batch(round_ * 7 + i), leader_epoch=0)
        ticket = log.flush_ticket()
        worker = threading.Thread(target=PartitionLog.fsync, args=(ticket,))
        worker.start()
        for i in range(3):
            log.append(batch(i), leader_epoch=0)
        worker.join()
        assert ticket.synced
        log.complete_flush(ticket)
        assert log.flushed_offset == ticket.end_offset
    log.close()


def test_a_ticket_must_be_synced_before_completion_and_only_once(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    log.append(batch(), leader_epoch=0)
    ticket: FlushTicket = log.flush_ticket()
    with pytest.raises(ValueError):
        log.complete_flush(ticket)
    PartitionLog.fsync(ticket)
    with pytest.raises(ValueError):
        PartitionLog.fsync(ticket)
    log.complete_flush(ticket)
    assert log.flushed_offset == 1
    unused = log.flush_ticket()
    unused.release()  # a ticket that will not be synced gives its descriptors back
    with pytest.raises(ValueError):
        PartitionLog.fsync(unused)
    log.close()


def test_a_ticket_from_before_a_truncation_does_not_count(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    for i in range(4):
        log.append(batch(i), leader_epoch=0)
    log.flush()
    log.append(batch(4), leader_epoch=0)
    stale = log.flush_ticket()
    log.truncate_to(2)
    for i in range(3):
        log.append(batch(i), leader_epoch=1)  # offsets 2..4 again, now other batches, not yet synced
    PartitionLog.fsync(stale)
    log.complete_flush(stale)
    assert log.flushed_offset == 2
    log.close()


def test_a_ticket_survives_its_log_being_deleted(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "t-0", SMALL)
    log.append(batch(), leader_epoch=0)
    ticket = log.flush_ticket()
    log.delete()
    PartitionLog.fsync(ticket)  # its own descriptors: no EBADF, no fsync of a reused fd
    log.complete_flush(ticket)  # ignored: the log is gone
    assert not (tmp_path / "t-0").exists()


def test_rolled_segments_release_their_descriptors_once_synced(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    for i in range(200):
        log.append(batch(i), leader_epoch=0)
    assert log.segment_count > 20
    unsynced = len(open_fds_under(tmp_path))
    assert unsynced > 20  # written, not yet durable: kept open for the fsync
    log.flush()
    assert len(open_fds_under(tmp_path)) == 2  # the active segment and its index
    for offset in range(0, log.log_end_offset, 5):  # reading everything opens old segments only a few at a time
        log.read(offset, 1)
        assert len(open_fds_under(tmp_path)) <= 2 + 4
    log.close()
    assert open_fds_under(tmp_path) == []


def test_open_holds_two_descriptors_per_partition(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    for i in range(100):
        log.append(batch(i), leader_epoch=0)
    log.close()
    log = PartitionLog.open(tmp_path, SMALL)
    assert sorted(Path(p).suffix for p in open_fds_under(tmp_path)) == [".index", ".log"]
    log.close()


@pytest.fixture
def file_size_limit() -> Iterator[None]:
    """Lets a test cap file sizes (RLIMIT_FSIZE) so writes fail part-way, like a full disk, with real files."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)


def test_a_failed_append_leaves_no_partial_batch(
    tmp_path: Path, file_size_limit: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a filesystem that reserves no space ahead (see the next test): each append grows the file, so a write
    # can fail midway (space reserved ahead is never short of a write).
    monkeypatch.setattr(preallocation, "_fallocate", None)
    log = PartitionLog.open(tmp_path, TopicConfig())
    stored = []
    for i in range(3):
        stored.append(stamp(batch(i, size=300), log.append(batch(i, size=300), leader_epoch=0).base_offset, 0))
    segment = next(tmp_path.glob("*.log"))
    size_before = segment.stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size_before + 100, resource.RLIM_INFINITY))
    with pytest.raises(PikafkaError) as err:
        log.append(batch(3, size=300), leader_epoch=0)  # 100 bytes go out, then EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert err.value.code is ErrorCode.STORAGE_ERROR
    assert segment.stat().st_size == size_before
    assert (log.log_end_offset, log.size_bytes) == (3, size_before)
    stored.append(stamp(batch(4, size=300), log.append(batch(4, size=300), leader_epoch=0).base_offset, 0))
    log.close()
    log = PartitionLog.open(tmp_path, TopicConfig())
    assert log.recovered_truncated_bytes == 0
    assert log.read(0, 10**6) == b"".join(stored)
    log.close()


def test_where_space_cannot_be_reserved_the_file_grows_with_its_appends(tmp_path: Path, file_size_limit: None) -> None:
    # A file size limit makes the kernel refuse the 1 MiB reservation (EFBIG), as a filesystem without fallocate or
    # a nearly full disk would; the appends below it must go on regardless.
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    log = PartitionLog.open(tmp_path, TopicConfig())
    stored = [
        stamp(batch(i, size=300), log.append(batch(i, size=300), leader_epoch=0).base_offset, 0) for i in range(5)
    ]
    segment = next(tmp_path.glob("*.log"))
    assert segment.stat().st_size == log.size_bytes == sum(len(b) for b in stored)
    log.flush()
    assert log.read(0, 10**6) == b"".join(stored)
    log.close()


def test_after_a_failed_fsync_nothing_more_counts_as_flushed(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    log.append(batch(), leader_epoch=0)
    ticket = log.flush_ticket()
    # Fault injection: fsync rejects a pipe (EINVAL) as a failing SD card would reject the segment.
    read_end, write_end = os.pipe()
    os.close(write_end)
    ticket._fds.append(read_end)
    with pytest.raises(OSError):
        PartitionLog.fsync(ticket)
    assert not ticket.synced
    log.append(batch(), leader_epoch=0)
    with pytest.raises(PikafkaError) as err:
        log.flush_ticket()  # Linux reports a lost write once: a later fsync succeeding would prove nothing
    assert err.value.code is ErrorCode.STORAGE_ERROR
    assert log.flushed_offset == 0
    log.close()  # no clean-shutdown mark: the next open checks everything
    log = PartitionLog.open(tmp_path, SMALL)
    assert (log.log_end_offset, log.flushed_offset) == (2, 2)
    log.close()
