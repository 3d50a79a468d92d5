"""The storage pieces replication adds: the leader-epoch cache and restarting a log at an offset."""

from __future__ import annotations

from pathlib import Path

from pi_broker.log import PartitionLog
from pi_broker.log.leader_epoch_cache import CHECKPOINT_FILE, UNDEFINED_EPOCH, EpochEnd, EpochEntry
from pikafka.records import Record, encode_batch, iter_batches, stamp
from pikafka.topic_config import TopicConfig

SMALL = TopicConfig(segment_bytes=1024, index_interval_bytes=128)


def append(log: PartitionLog, epoch: int, count: int = 1) -> None:
    for i in range(count):
        log.append(encode_batch([Record(f"e{epoch}-{i}".encode().ljust(40, b"-"))]), leader_epoch=epoch)


def test_epochs_are_recorded_and_answered_like_kafka(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    append(log, 0, 3)  # offsets 0..2
    log.epochs.assign(2, log.log_end_offset)  # a leader taking over at epoch 2 (1 never wrote here)
    append(log, 2, 4)  # 3..6
    append(log, 5, 2)  # 7..8
    assert log.epochs.entries == [EpochEntry(0, 0), EpochEntry(2, 3), EpochEntry(5, 7)]
    assert log.epochs.end_offset_for(5, log.log_end_offset) == EpochEnd(5, 9)
    assert log.epochs.end_offset_for(2, log.log_end_offset) == EpochEnd(2, 7)
    # An epoch this log never had: the largest one below it, ending where the next one starts.
    assert log.epochs.end_offset_for(1, log.log_end_offset) == EpochEnd(0, 3)
    assert log.epochs.end_offset_for(4, log.log_end_offset) == EpochEnd(2, 7)
    assert log.epochs.end_offset_for(UNDEFINED_EPOCH, 9) == EpochEnd(UNDEFINED_EPOCH, UNDEFINED_EPOCH)
    log.close()
    reopened = PartitionLog.open(tmp_path, SMALL)
    assert reopened.epochs.entries == [EpochEntry(0, 0), EpochEntry(2, 3), EpochEntry(5, 7)]
    reopened.close()


def test_truncation_forgets_the_epochs_it_cut(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    append(log, 1, 3)
    append(log, 3, 3)
    log.truncate_to(3)
    assert log.epochs.entries == [EpochEntry(1, 0)]
    assert log.epochs.latest_epoch == 1
    log.close()


def test_a_missing_checkpoint_is_rebuilt_from_the_batch_headers(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    append(log, 0, 30)  # several segments
    append(log, 4, 30)
    assert log.segment_count > 2
    log.close()
    (tmp_path / CHECKPOINT_FILE).unlink()
    reopened = PartitionLog.open(tmp_path, SMALL)
    assert reopened.epochs.entries == [EpochEntry(0, 0), EpochEntry(4, 30)]
    assert (tmp_path / CHECKPOINT_FILE).exists()
    reopened.close()


def test_entries_beyond_a_crash_shortened_log_are_dropped(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    append(log, 0, 3)
    log.epochs.assign(7, 10)  # as if epoch 7's first batches never reached the disk
    log.close()
    reopened = PartitionLog.open(tmp_path, SMALL)
    assert reopened.epochs.entries == [EpochEntry(0, 0)]
    reopened.close()


def test_follower_appends_keep_the_leaders_offsets_and_epochs(tmp_path: Path) -> None:
    leader = PartitionLog.open(tmp_path / "leader", SMALL)
    append(leader, 3, 5)
    follower = PartitionLog.open(tmp_path / "follower", SMALL)
    for _, batch in iter_batches(leader.read(0, 10**9)):
        follower.append_replica(bytes(batch))
    assert follower.read(0, 10**9) == leader.read(0, 10**9)
    assert follower.epochs.entries == [EpochEntry(3, 0)]
    leader.close()
    follower.close()


def test_truncate_fully_restarts_the_log_at_an_offset(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, SMALL)
    append(log, 1, 40)
    log.truncate_fully_and_start_at(1000)
    assert (log.log_start_offset, log.log_end_offset, log.flushed_offset) == (1000, 1000, 1000)
    assert log.epochs.entries == []
    assert sorted(p.name for p in tmp_path.glob("*.log")) == [f"{1000:020d}.log"]
    batch = stamp(encode_batch([Record(b"from the leader")]), 1000, 6)
    log.append_replica(batch)
    log.close()
    reopened = PartitionLog.open(tmp_path, SMALL)
    assert (reopened.log_start_offset, reopened.log_end_offset) == (1000, 1001)
    assert reopened.epochs.entries == [EpochEntry(6, 1000)]
    reopened.close()
