"""The producer's batching rules, without any network: sizes, linger, one batch in flight, sequences, retries."""

import asyncio

import pytest

from clients.accumulator import RecordAccumulator, record_size
from clients.records import TopicPartition
from pikafka.records import decode_records, parse_header

TP = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


def make(max_batch_bytes=1024, linger_s=0.005, idempotent=True, on_seal=None):
    return RecordAccumulator(
        max_batch_bytes=max_batch_bytes,
        linger_s=linger_s,
        delivery_timeout_s=30.0,
        idempotent=idempotent,
        on_seal=on_seal,
    )


def add(acc, tp, value, now=0.0):
    fut = asyncio.get_running_loop().create_future()
    wake = acc.append(tp, (value, None, (), None), fut, now)
    return fut, wake


async def test_first_record_arms_linger_and_later_ones_do_not_wake():
    acc = make()
    _, wake1 = add(acc, TP, b"a")
    _, wake2 = add(acc, TP, b"b")
    assert (wake1, wake2) == (True, False)
    assert acc.take_ready(0.001, flushing=False, now_ms=1) == []
    assert acc.next_wakeup(0.001) == pytest.approx(0.005)
    [batch] = acc.take_ready(0.005, flushing=False, now_ms=1)
    assert [r[0] for r in batch.records] == [b"a", b"b"]


async def test_flushing_ignores_linger():
    acc = make(linger_s=10)
    add(acc, TP, b"a")
    assert acc.take_ready(0.0, flushing=False, now_ms=1) == []
    assert len(acc.take_ready(0.0, flushing=True, now_ms=1)) == 1


async def test_batch_seals_at_max_bytes_and_never_exceeds_it():
    sealed = []
    acc = make(max_batch_bytes=1024, on_seal=sealed.append)
    value = b"x" * 100
    wakes = [add(acc, TP, value)[1] for _ in range(25)]
    per_batch = (1024 - 61) // record_size((value, None, (), None))
    assert sealed == [TP] * (25 // per_batch)
    assert wakes.count(True) >= 2
    [first] = acc.take_ready(0.0, flushing=False, now_ms=1)
    assert len(first.records) == per_batch
    assert len(first.payload) <= 1024


async def test_one_batch_in_flight_per_partition_and_partitions_independent():
    acc = make(max_batch_bytes=200)
    for _ in range(6):
        add(acc, TP, b"y" * 60)
    add(acc, TP1, b"z")
    ready = acc.take_ready(1.0, flushing=False, now_ms=1)
    assert sorted(b.tp for b in ready) == [TP, TP1]
    # TP has more sealed batches, but its first is still in flight
    assert acc.take_ready(2.0, flushing=True, now_ms=1) == []
    first = next(b for b in ready if b.tp == TP)
    acc.succeeded(first, 0)
    [second] = acc.take_ready(2.0, flushing=False, now_ms=1)
    assert second.tp == TP
    assert second.base_sequence == first.base_sequence + len(first)


async def test_success_resolves_futures_with_consecutive_offsets():
    acc = make()
    futs = [add(acc, TP, b"v%d" % i)[0] for i in range(3)]
    [batch] = acc.take_ready(1.0, flushing=False, now_ms=1234)
    acc.succeeded(batch, 40)
    assert [f.result().offset for f in futs] == [40, 41, 42]
    assert {f.result().timestamp_ms for f in futs} == {1234}
    assert acc.is_empty()
    assert acc.buffered_bytes == 0


async def test_retry_resends_the_same_bytes_with_the_same_sequence():
    acc = make()
    add(acc, TP, b"a")
    [batch] = acc.take_ready(1.0, flushing=False, now_ms=1)
    payload = batch.payload
    acc.retry_later(batch, 1.5)
    assert acc.take_ready(1.2, flushing=False, now_ms=2) == []
    assert acc.next_wakeup(1.2) == 1.5
    [again] = acc.take_ready(1.5, flushing=False, now_ms=3)
    assert again is batch and again.payload == payload


async def test_idempotent_batches_carry_producer_id_and_sequences():
    acc = make(max_batch_bytes=250)
    for i in range(4):
        add(acc, TP, b"r%d" % i + b"." * 40)
    seqs = []
    while not acc.is_empty():
        [batch] = acc.take_ready(9.0, flushing=True, now_ms=1)
        header = parse_header(batch.payload)
        assert header.producer_id == acc.producer_id >= 0
        assert header.producer_epoch == 0
        seqs.append((header.base_sequence, header.record_count))
        assert decode_records(batch.payload)[0].value.startswith(b"r")
        acc.succeeded(batch, 0)
    assert seqs == [(0, 3), (3, 1)]


async def test_failed_batch_moves_partition_to_a_new_producer_id():
    acc = make()
    fut, _ = add(acc, TP, b"a")
    [batch] = acc.take_ready(1.0, flushing=False, now_ms=1)
    old_pid = batch.producer_id
    acc.failed(batch, RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        fut.result()
    add(acc, TP, b"b")
    [nxt] = acc.take_ready(2.0, flushing=False, now_ms=1)
    assert nxt.producer_id != old_pid
    assert nxt.base_sequence == 0


async def test_without_idempotence_no_producer_id():
    acc = make(idempotent=False)
    add(acc, TP, b"a")
    [batch] = acc.take_ready(1.0, flushing=False, now_ms=1)
    header = parse_header(batch.payload)
    assert (header.producer_id, header.base_sequence) == (-1, -1)


async def test_ack_less_completion_gives_offset_minus_one():
    acc = make(idempotent=False)
    fut, _ = add(acc, TP, b"a")
    [batch] = acc.take_ready(1.0, flushing=False, now_ms=1)
    acc.succeeded(batch, -1)
    assert fut.result().offset == -1


async def test_fail_all_and_pending_batches():
    acc = make()
    futs = [add(acc, tp, b"a")[0] for tp in (TP, TP1)]
    assert {f for b in acc.pending_batches() for f in b.futures} == set(futs)
    done = [b.wait_done() for b in acc.pending_batches()]
    acc.fail_all(RuntimeError("closed"))
    assert all(isinstance(f.exception(), RuntimeError) for f in futs)
    assert acc.is_empty()
    assert all(d.done() for d in done)
