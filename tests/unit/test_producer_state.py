"""The idempotent-producer table: duplicates, gaps, epochs, and rebuilding from batch headers."""

from __future__ import annotations

import pytest

from pi_broker.producer_state import BATCHES_KEPT, Duplicate, ProducerStateTable
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import Record, encode_batch, parse_header, stamp

PID = 12345


def header(seq: int, count: int = 1, *, epoch: int = 0, pid: int = PID, base_offset: int = 0):
    batch = encode_batch(
        [Record(value=b"v")] * count, producer_id=pid, producer_epoch=epoch, base_sequence=seq, now_ms=1
    )
    return parse_header(stamp(batch, base_offset, 0))


def test_unknown_producer_may_start_at_any_sequence():
    assert ProducerStateTable().check(header(41)) is None


def test_non_idempotent_batches_are_never_checked():
    table = ProducerStateTable()
    plain = parse_header(encode_batch([Record(value=b"v")]))
    table.record(plain, 0, 0)
    assert table.check(plain) is None
    assert len(table) == 0


def test_retry_of_a_written_batch_is_a_duplicate_with_its_offsets():
    table = ProducerStateTable()
    table.record(header(0, 3), 10, 12)
    table.record(header(3, 2), 13, 14)
    dup = table.check(header(0, 3))
    assert isinstance(dup, Duplicate)
    assert (dup.original.base_offset, dup.original.last_offset) == (10, 12)
    assert table.check(header(5)) is None


def test_sequence_gap_is_out_of_order():
    table = ProducerStateTable()
    table.record(header(0, 2), 0, 1)
    with pytest.raises(PikafkaError) as info:
        table.check(header(3))
    assert info.value.code is ErrorCode.OUT_OF_ORDER_SEQUENCE


def test_older_epoch_is_fenced_and_newer_epoch_restarts():
    table = ProducerStateTable()
    table.record(header(7, epoch=2), 0, 0)
    with pytest.raises(PikafkaError) as info:
        table.check(header(8, epoch=1))
    assert info.value.code is ErrorCode.INVALID_PRODUCER_EPOCH
    assert table.check(header(0, epoch=3)) is None
    table.record(header(0, epoch=3), 1, 1)
    entry = table.entry(PID)
    assert entry is not None and entry.epoch == 3 and len(entry.batches) == 1


def test_only_the_last_batches_are_remembered():
    table = ProducerStateTable()
    for seq in range(BATCHES_KEPT + 2):
        table.record(header(seq), seq, seq)
    # The oldest two aged out: a retry of them is no longer recognised and is a sequence error instead.
    with pytest.raises(PikafkaError):
        table.check(header(0))
    assert isinstance(table.check(header(2)), Duplicate)


def test_rebuild_replays_headers_with_their_offsets():
    headers = [header(0, 2, base_offset=0), header(2, 1, base_offset=2), header(0, 1, pid=99, base_offset=3)]
    table = ProducerStateTable.rebuild(headers)
    dup = table.check(header(2))
    assert isinstance(dup, Duplicate) and dup.original.base_offset == 2
    assert table.check(header(3)) is None
    assert len(table) == 2
