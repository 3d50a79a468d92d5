"""The broker model without CoAP: group commit, high watermark, produce/fetch validation, pub-sub watch."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from pi_broker.broker import Broker
from pi_broker.config import BrokerConfig
from pi_broker.fsync_placement import FsyncPlacement
from pi_broker.group_commit import GroupCommit
from pi_broker.log.flush_ticket import FlushTicket
from pi_broker.messages import CreateTopicRequest, FetchRequest, ProduceRequest
from pi_broker.partition import Partition
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import Record, decode_records, encode_batch, iter_batches


def produce_request(topic: str, *values: bytes, partition: int = 0, acks: int = 1, **producer: int) -> ProduceRequest:
    batch = encode_batch([Record(value=v) for v in values], **producer)
    return ProduceRequest.parse({"acks": acks, "batches": [{"topic": topic, "partition": partition, "records": batch}]})


def fetch_request(topic: str, offset: int = 0, wait_ms: int = 0) -> FetchRequest:
    return FetchRequest.parse({"partitions": [{"topic": topic, "partition": 0, "offset": offset}], "wait_ms": wait_ms})


def values_of(records: bytes) -> list[bytes | None]:
    return [r.value for _, b in iter_batches(records) for r in decode_records(b)]


def place_fsyncs(broker: Broker, where: str) -> None:
    """Where the broker's group commit fsyncs: "threads" always, or "loop" from its first timed round on."""
    if where == "threads":
        broker._group_commit.placement = FsyncPlacement(0.0)
    else:
        broker._group_commit.placement = FsyncPlacement(1.0, min_samples=1)


async def warm_up(broker: Broker, where: str) -> None:
    """One produce, so that a broker told to fsync on the loop has timed the round it needs to start doing so."""
    broker.create_topic(CreateTopicRequest("warm-up", 1, 1, {}))
    await broker.produce(produce_request("warm-up", b"w"))
    assert broker._group_commit.placement.on_loop == (where == "loop")


@pytest.fixture
async def broker(tmp_path: Path):
    broker = Broker(BrokerConfig(data_dir=tmp_path / "data", bind="127.0.0.1"))
    broker.open()
    broker.start()
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture(params=["threads", "loop"])
async def placed_broker(request: pytest.FixtureRequest, tmp_path: Path):
    """A broker whose fsyncs run on the threads, or on the event loop, warmed up so that they already do."""
    broker = Broker(BrokerConfig(data_dir=tmp_path / "data", bind="127.0.0.1"))
    place_fsyncs(broker, request.param)
    broker.open()
    broker.start()
    try:
        await warm_up(broker, request.param)
        yield broker
    finally:
        await broker.close()


async def test_concurrent_produces_share_fsync_rounds(placed_broker: Broker):
    broker = placed_broker
    broker.create_topic(CreateTopicRequest("t", 1, 1, {}))
    rounds_before = broker._group_commit.rounds
    results = await asyncio.gather(*(broker.produce(produce_request("t", f"{i}".encode())) for i in range(50)))
    assert sorted(r[0].base_offset for r in results) == list(range(50))
    assert broker._group_commit.rounds - rounds_before < 50  # many acks per fsync
    fetched = await broker.fetch(fetch_request("t"))
    assert fetched[0].high_watermark == 50 and len(values_of(fetched[0].records)) == 50


@pytest.mark.parametrize("where", ["threads", "loop"])
async def test_requests_arriving_while_a_round_waits_share_its_fsync(tmp_path: Path, where: str):
    broker = Broker(BrokerConfig(data_dir=tmp_path / "data", bind="127.0.0.1"))
    # A long linger and burst bound, so that only "no new requests in the last loop iteration" can start the round.
    broker._group_commit = GroupCommit(max_linger_s=30.0, loop_linger_s=30.0, min_burst_s=30.0)
    place_fsyncs(broker, where)
    broker.open()
    broker.start()
    try:
        # A lone request waits one empty loop iteration, not the linger.
        await asyncio.wait_for(warm_up(broker, where), timeout=10)
        broker.create_topic(CreateTopicRequest("t", 1, 1, {}))

        async def produce_after(iterations: int) -> None:
            for _ in range(iterations):
                await asyncio.sleep(0)  # one loop iteration each, as requests read one after another would be
            await broker.produce(produce_request("t", f"{iterations}".encode()))

        rounds = broker._group_commit.rounds
        await asyncio.wait_for(asyncio.gather(*(produce_after(i) for i in range(8))), timeout=10)
        assert broker._group_commit.rounds - rounds == 1
    finally:
        await broker.close()


@pytest.mark.parametrize("where", ["threads", "loop"])
async def test_the_linger_is_the_one_for_where_the_fsyncs_run(tmp_path: Path, where: str):
    broker = Broker(BrokerConfig(data_dir=tmp_path / "data", bind="127.0.0.1"))
    # No linger where the fsyncs run, a long one for the other place: a stream of requests, one per loop iteration,
    # must then take several rounds. Were the other place's linger used, they would share one (test above).
    on_loop = where == "loop"
    broker._group_commit = GroupCommit(max_linger_s=30.0 * on_loop, loop_linger_s=30.0 * (not on_loop))
    place_fsyncs(broker, where)
    broker.open()
    broker.start()
    try:
        await asyncio.wait_for(warm_up(broker, where), timeout=10)
        broker.create_topic(CreateTopicRequest("t", 1, 1, {}))

        async def produce_after(iterations: int) -> None:
            for _ in range(iterations):
                await asyncio.sleep(0)
            await broker.produce(produce_request("t", f"{iterations}".encode()))

        rounds = broker._group_commit.rounds
        await asyncio.wait_for(asyncio.gather(*(produce_after(i) for i in range(8))), timeout=10)
        assert broker._group_commit.rounds - rounds > 1
    finally:
        await broker.close()


@pytest.mark.parametrize(
    ("max_linger_s", "loop_linger_s", "burst_requests", "one_round"),
    [
        (30.0, 0.0, 1000, True),  # the loop's short linger does not split a burst
        (0.001, 30.0, 1000, False),  # max_linger_s caps the burst's bound
        (30.0, 30.0, 3, False),  # the broker's pace sets it: three requests' worth of 2 ms each, well under 30 s
    ],
)
async def test_a_burst_on_the_loop_is_split_by_its_own_bound_only(
    tmp_path: Path, max_linger_s: float, loop_linger_s: float, burst_requests: int, one_round: bool
):
    # Requests read in one go are appended with no loop iteration between them. On the loop the short linger must
    # not split them (each split-off round blocks the rest of the burst for an fsync); the burst's bound does: about
    # burst_requests requests' worth of the broker's pace, never more than max_linger_s.
    broker = Broker(BrokerConfig(data_dir=tmp_path / "data", bind="127.0.0.1"))
    broker._group_commit = GroupCommit(
        max_linger_s=max_linger_s, loop_linger_s=loop_linger_s, min_burst_s=0.0, burst_requests=burst_requests
    )
    place_fsyncs(broker, "loop")
    broker.open()
    broker.start()
    try:
        await asyncio.wait_for(warm_up(broker, "loop"), timeout=10)
        broker.create_topic(CreateTopicRequest("t", 1, 1, {}))
        rounds = broker._group_commit.rounds
        waiting = []
        for i in range(8):
            request = produce_request("t", f"{i}".encode())
            waiting.append(broker.produce_nowait(request))
            time.sleep(0.002)  # the CPU the next request's parse takes, 2 ms on a slow Pi
        results = [p.settle_now() if not p.waiting else await asyncio.wait_for(p.wait(5.0), 10) for p in waiting]
        assert [r[0].base_offset for r in results] == list(range(8))
        assert (broker._group_commit.rounds - rounds == 1) == one_round
        assert broker._topic("t").partitions[0].log.flushed_offset == 8
    finally:
        await broker.close()


async def test_an_acknowledged_produce_is_already_fsynced(placed_broker: Broker):
    broker = placed_broker
    on_loop = broker._group_commit.placement.on_loop
    rounds_on_loop = broker._group_commit.rounds_on_loop
    broker.create_topic(CreateTopicRequest("t", 2, 1, {}))
    for i in range(20):
        (result,) = await broker.produce(produce_request("t", f"{i}".encode(), partition=i % 2))
        partition = broker._topic("t").partitions[i % 2]
        assert partition.log.flushed_offset > result.last_offset
    assert broker._group_commit.rounds_on_loop - rounds_on_loop == (20 if on_loop else 0)


def stall_next_fsync(partition: Partition, seconds: float) -> None:
    """Fault injection: the partition's next fsync takes `seconds` longer, as an SD card collecting its garbage."""
    take_ticket = partition.log.flush_ticket

    def stalling_ticket() -> FlushTicket:
        ticket = take_ticket()
        real_sync = ticket.sync

        def slow_sync() -> None:
            time.sleep(seconds)
            real_sync()

        ticket.sync = slow_sync  # type: ignore[method-assign]
        partition.log.flush_ticket = take_ticket  # type: ignore[method-assign]
        return ticket

    partition.log.flush_ticket = stalling_ticket  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "bytes_per_s",
    [
        4 * 1024 * 1024,  # the default: a one-record batch of some 150 bytes adds nothing to the 50 ms
        1000.0,  # 1 kB/s: the same batch may take 50 ms + about 150 ms before it counts as a stall
    ],
)
async def test_a_stalled_fsync_on_the_loop_sends_later_rounds_to_the_threads(tmp_path: Path, bytes_per_s: float):
    broker = Broker(BrokerConfig(data_dir=tmp_path / "data", bind="127.0.0.1"))
    broker._group_commit.placement = FsyncPlacement(
        1.0, min_samples=1, stall_s=0.05, stall_hold_s=60.0, stall_bytes_per_s=bytes_per_s
    )
    stall_expected = bytes_per_s > 1000.0
    broker.open()
    broker.start()
    try:
        await warm_up(broker, "loop")
        broker.create_topic(CreateTopicRequest("t", 1, 1, {}))
        (partition,) = broker._topic("t").partitions
        stall_next_fsync(partition, 0.08)
        rounds_on_loop = broker._group_commit.rounds_on_loop
        await broker.produce(produce_request("t", b"stalled"))
        assert broker._group_commit.rounds_on_loop == rounds_on_loop + 1  # the stalled round ran on the loop
        # With 1 kB/s the round is judged by the bytes its flush ticket had to write: no stall.
        assert broker._group_commit.placement.on_loop is not stall_expected
        for i in range(5):
            (result,) = await broker.produce(produce_request("t", f"{i}".encode()))
            assert partition.log.flushed_offset > result.last_offset
        later_on_loop = broker._group_commit.rounds_on_loop - rounds_on_loop - 1
        assert later_on_loop == (0 if stall_expected else 5)  # after a stall, the later rounds go to the threads
    finally:
        await broker.close()


async def test_a_failed_fsync_answers_the_waiting_producers_with_storage_error(placed_broker: Broker):
    broker = placed_broker
    broker.create_topic(CreateTopicRequest("t", 1, 1, {}))
    await broker.produce(produce_request("t", b"durable"))
    (partition,) = broker._topic("t").partitions
    take_ticket = partition.log.flush_ticket

    def failing_ticket() -> FlushTicket:
        # Fault injection: fsync rejects a pipe (EINVAL), as a failing SD card would reject the segment.
        ticket = take_ticket()
        read_end, write_end = os.pipe()
        os.close(write_end)
        ticket._fds.append(read_end)
        return ticket

    partition.log.flush_ticket = failing_ticket  # type: ignore[method-assign]
    outcomes = await asyncio.gather(
        *(broker.produce(produce_request("t", b"lost")) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, PikafkaError) and o.code is ErrorCode.STORAGE_ERROR for o in outcomes), outcomes
    with pytest.raises(PikafkaError) as refused:
        await broker.produce(produce_request("t", b"after"))  # refused until a restart recovers the log
    assert refused.value.code is ErrorCode.STORAGE_ERROR
    assert partition.high_watermark == 1  # consumers never saw what was not durable


@pytest.mark.parametrize("where", ["threads", "loop"])
async def test_close_flushes_and_answers_producers_still_waiting(tmp_path: Path, where: str):
    broker = Broker(BrokerConfig(data_dir=tmp_path / "data", bind="127.0.0.1"))
    place_fsyncs(broker, where)
    broker.open()
    broker.start()
    await warm_up(broker, where)
    broker.create_topic(CreateTopicRequest("t", 1, 1, {}))
    waiting = [asyncio.create_task(broker.produce(produce_request("t", f"{i}".encode()))) for i in range(10)]
    await asyncio.sleep(0)  # every produce has appended and is waiting for its round
    await broker.close()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results), results
    reopened = Broker(BrokerConfig(data_dir=tmp_path / "data", bind="127.0.0.1"))
    reopened.open()
    try:
        (partition,) = reopened._topic("t").partitions
        assert partition.log.log_end_offset == 10 and partition.high_watermark == 10
    finally:
        await reopened.close()


async def test_records_are_invisible_until_fsynced(broker: Broker):
    broker.create_topic(CreateTopicRequest("lazy", 1, 1, {"flush_interval_ms": 300}))
    await broker.produce(produce_request("lazy", b"x"))  # acknowledged after the write
    (partition,) = broker._topic("lazy").partitions
    assert partition.log.log_end_offset == 1 and partition.high_watermark == 0
    assert (await broker.fetch(fetch_request("lazy")))[0].records == b""
    fetched = await broker.fetch(fetch_request("lazy", wait_ms=5000))  # wakes when the periodic fsync lands
    assert values_of(fetched[0].records) == [b"x"] and partition.high_watermark == 1


async def test_request_is_validated_whole(broker: Broker):
    broker.create_topic(CreateTopicRequest("t", 1, 1, {}))
    pid = {"producer_id": 5, "producer_epoch": 0}
    good = encode_batch([Record(value=b"a")], base_sequence=0, **pid)
    gap = encode_batch([Record(value=b"b")], base_sequence=3, **pid)
    request = ProduceRequest.parse(
        {"batches": [{"topic": "t", "partition": 0, "records": good}, {"topic": "t", "partition": 0, "records": gap}]}
    )
    with pytest.raises(PikafkaError) as info:
        await broker.produce(request)
    assert info.value.code is ErrorCode.OUT_OF_ORDER_SEQUENCE
    assert broker._topic("t").partitions[0].log.log_end_offset == 0


async def test_watch_follows_durable_records(broker: Broker):
    broker.create_topic(CreateTopicRequest("ps", 2, 1, {}))
    watch = broker.watch("ps")
    seen: list[bytes] = []

    async def follow() -> None:
        async for reading in watch:
            seen.append(reading.value)
            if len(seen) == 6:
                return

    task = asyncio.create_task(follow())
    await asyncio.gather(*(broker.append_reading("ps", f"v{i}".encode(), b"k", 0) for i in range(6)))
    await asyncio.wait_for(task, 5)
    assert sorted(seen) == sorted(f"v{i}".encode() for i in range(6))
    latest = broker.latest_reading("ps")
    assert latest is not None and latest.content_format == 0


async def test_reopen_recovers_topics_and_producer_state(tmp_path: Path):
    config = BrokerConfig(data_dir=tmp_path / "d")
    first = Broker(config)
    first.open()
    first.start()
    first.create_topic(CreateTopicRequest("t", 2, 1, {}))
    await first.produce(produce_request("t", b"a", producer_id=9, producer_epoch=0, base_sequence=0))
    await first.close()
    second = Broker(config)
    second.open()
    second.start()
    try:
        assert second.list_topics() == ["t"]
        again = await second.produce(produce_request("t", b"a", producer_id=9, producer_epoch=0, base_sequence=0))
        assert again[0].base_offset == 0 and second._topic("t").partitions[0].log.log_end_offset == 1
    finally:
        await second.close()
