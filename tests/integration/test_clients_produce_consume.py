"""Producer, Consumer and Admin against a real broker process on loopback."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from aiocoap import Code

from clients import Admin, Consumer, ErrorCode, PikafkaError, Producer, TopicPartition
from clients import transport as transport_module
from clients.transport import BrokerUnreachableError, CoapTransport


async def create_topic(url: str, name: str, partitions: int = 1) -> None:
    async with Admin(url) as admin:
        await admin.create_topic(name, partitions=partitions)


async def consume_all(url: str, topic: str, expected: int, timeout_s: float = 20.0, **kwargs):
    out = []
    async with Consumer(topic, bootstrap=url, **kwargs) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                out.extend(records)
    return out


async def test_ten_thousand_keyed_records_round_trip_in_order(broker):
    await create_topic(broker.url, "readings", partitions=4)
    sent = []
    async with Producer(broker.url, linger_ms=2) as producer:
        futures = []
        for i in range(10_000):
            key = f"sensor-{i % 13}".encode()
            value = f"{i}".encode()
            futures.append(await producer.send("readings", value, key=key, headers=[("seq", value)]))
            sent.append((key, value))
        await producer.flush()
        metas = [f.result() for f in futures]

    records = await consume_all(broker.url, "readings", 10_000)
    assert len(records) == 10_000
    by_partition = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r)
    assert len(by_partition) == 4  # keys spread over every partition
    for partition, recs in by_partition.items():
        assert [r.offset for r in recs] == list(range(len(recs))), partition
    # Every key's records arrive in the order they were sent, each exactly once.
    per_key = defaultdict(list)
    for r in records:
        assert r.headers == (("seq", r.value),)
        per_key[r.key].append(int(r.value))
    for key, values in per_key.items():
        assert values == sorted(values), key
    assert sorted(int(r.value) for r in records) == list(range(10_000))
    # The offsets the producer reported are where the consumer found each record.
    found = {(r.partition, r.offset): r.value for r in records}
    assert all(found[(m.partition, m.offset)] == value for m, (_, value) in zip(metas, sent, strict=True))


async def test_send_and_wait_offsets_match_what_the_consumer_sees(broker):
    await create_topic(broker.url, "t", partitions=2)
    async with Producer(broker.url) as producer:
        metas = [await producer.send_and_wait("t", b"v0", partition=0, timestamp_ms=1_700_000_000_000)]
        metas += [await producer.send_and_wait("t", b"v%d" % i, partition=i % 2) for i in range(1, 6)]
    assert [(m.partition, m.offset) for m in metas] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert metas[0].timestamp_ms == 1_700_000_000_000
    records = await consume_all(broker.url, "t", 6)
    seen = {(r.partition, r.offset): (r.value, r.timestamp_ms) for r in records}
    for i, m in enumerate(metas):
        assert seen[(m.partition, m.offset)] == (b"v%d" % i, m.timestamp_ms)


async def test_lost_answer_is_retried_and_deduplicated(broker, monkeypatch):
    """The broker writes the batch, the answer never arrives: the producer re-sends the same batch (same producer
    id and sequence) and the broker answers with the original offsets instead of writing it twice."""
    await create_topic(broker.url, "dedup")
    real_request = CoapTransport.request
    produce_calls = 0

    async def answer_lost_once(self, broker_address, method, path, **kwargs):
        nonlocal produce_calls
        response = await real_request(self, broker_address, method, path, **kwargs)
        if path == "/produce":
            produce_calls += 1
            if produce_calls == 1:
                raise BrokerUnreachableError(str(broker_address), "simulated lost answer", timed_out=True)
        return response

    monkeypatch.setattr(CoapTransport, "request", answer_lost_once)
    async with Producer(broker.url, retry_backoff_ms=10) as producer:
        futures = [await producer.send("dedup", b"r%d" % i) for i in range(5)]
        await producer.flush()
        offsets = [f.result().offset for f in futures]
        after = await producer.send_and_wait("dedup", b"after")
    assert produce_calls >= 3
    assert offsets == [0, 1, 2, 3, 4]
    assert after.offset == 5
    monkeypatch.undo()
    records = await consume_all(broker.url, "dedup", 6, timeout_s=5)
    assert [r.value for r in records] == [b"r0", b"r1", b"r2", b"r3", b"r4", b"after"]


async def test_same_batch_sent_twice_is_written_once(broker):
    """Calling the producer's internal send twice with one batch: the second answer repeats the first's offsets."""
    await create_topic(broker.url, "twice")
    async with Producer(broker.url, linger_ms=1000) as producer:
        for i in range(3):
            await producer.send("twice", b"x%d" % i)
        [batch] = producer._accumulator.take_ready(
            asyncio.get_running_loop().time(), flushing=True, now_ms=int(time.time() * 1000)
        )
        leader = producer._metadata.leader(batch.tp)
        body = {"acks": 1, "batches": [{"topic": "twice", "partition": 0, "records": batch.payload}]}
        first = await producer._transport.request(leader, Code.POST, "/produce", body=body, timeout_s=5)
        second = await producer._transport.request(leader, Code.POST, "/produce", body=body, timeout_s=5)
        assert first.cbor()["results"] == second.cbor()["results"]
        await producer._send_request(leader, [batch])  # and once more through the producer's own path
        assert [f.result().offset for f in batch.futures] == [0, 1, 2]
    records = await consume_all(broker.url, "twice", 3, timeout_s=5)
    assert [r.value for r in records] == [b"x0", b"x1", b"x2"]


async def test_acks_zero_delivers_without_offsets(broker):
    await create_topic(broker.url, "fire")
    async with Producer(broker.url, acks=0) as producer:
        futures = [await producer.send("fire", b"f%d" % i) for i in range(200)]
        await producer.flush()
    assert {f.result().offset for f in futures} == {-1}
    records = await consume_all(broker.url, "fire", 200, timeout_s=10)
    assert sorted(r.value for r in records) == sorted(b"f%d" % i for i in range(200))


async def test_latest_consumer_sees_only_new_records(broker):
    await create_topic(broker.url, "late")
    async with Producer(broker.url) as producer:
        for i in range(5):
            await producer.send_and_wait("late", b"old%d" % i)
        async with Consumer("late", bootstrap=broker.url, auto_offset_reset="latest") as consumer:
            tp = TopicPartition("late", 0)
            assert await consumer.position(tp) == 5
            for i in range(3):
                await producer.send_and_wait("late", b"new%d" % i)
            got = []
            while len(got) < 3:
                batches = await consumer.getmany(timeout_ms=3000)
                assert batches, "no new records arrived"
                got.extend(r.value for r in batches[tp])
    assert got == [b"new0", b"new1", b"new2"]


async def test_assign_seek_and_out_of_range_reset(broker):
    await create_topic(broker.url, "seeky", partitions=2)
    async with Producer(broker.url) as producer:
        for i in range(20):
            await producer.send("seeky", b"%d" % i, partition=1)
        await producer.flush()
    tp = TopicPartition("seeky", 1)
    async with Consumer(bootstrap=broker.url) as consumer:
        consumer.assign([tp])
        assert consumer.assignment() == {tp}
        consumer.seek(tp, 7)
        batches = await consumer.getmany(timeout_ms=3000, max_records=4)
        assert [r.offset for r in batches[tp]] == [7, 8, 9, 10]
        assert await consumer.position(tp) == 11
        rec = await anext(aiter(consumer))
        assert (rec.offset, rec.value) == (11, b"11")
        # Past the end of the log: the broker says OFFSET_OUT_OF_RANGE, the consumer resets to the earliest.
        consumer.seek(tp, 1000)
        batches = await consumer.getmany(timeout_ms=5000)
        assert batches[tp][0].offset == 0
        assert consumer.highwater(tp) == 20
        assert await consumer.end_offsets([tp]) == {tp: 20}
        assert await consumer.beginning_offsets([tp]) == {tp: 0}
        with pytest.raises(ValueError):
            consumer.seek(TopicPartition("seeky", 0), 0)


async def test_long_poll_gets_a_later_record_without_busy_looping(broker, monkeypatch):
    await create_topic(broker.url, "quiet")
    fetches = 0
    real_request = CoapTransport.request

    async def counting(self, broker_address, method, path, **kwargs):
        nonlocal fetches
        if path == "/fetch":
            fetches += 1
        return await real_request(self, broker_address, method, path, **kwargs)

    monkeypatch.setattr(CoapTransport, "request", counting)
    async with (
        Consumer("quiet", bootstrap=broker.url, fetch_max_wait_ms=10_000) as consumer,
        Producer(broker.url) as producer,
    ):
        waiter = asyncio.create_task(consumer.getmany(timeout_ms=20_000))
        await asyncio.sleep(1.0)
        assert not waiter.done()
        started = time.monotonic()
        await producer.send_and_wait("quiet", b"wake up")
        batches = await asyncio.wait_for(waiter, 15)
        # The poll would end 9 s later; an answer well before that came with the record, not with the timeout.
        assert time.monotonic() - started < 5.0
    assert [r.value for rs in batches.values() for r in rs] == [b"wake up"]
    assert fetches <= 2


async def test_iterating_consumer(broker):
    await create_topic(broker.url, "iter")
    async with Producer(broker.url) as producer:
        for i in range(10):
            await producer.send("iter", b"%d" % i)
    got = []
    async with Consumer("iter", bootstrap=broker.url) as consumer:
        async for record in consumer:
            got.append(record.value)
            if len(got) == 10:
                break
    assert got == [b"%d" % i for i in range(10)]


async def test_unknown_topic_errors(broker):
    async with Producer(broker.url) as producer:
        with pytest.raises(PikafkaError) as err:
            await producer.send("nope", b"x")
        assert err.value.code is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        await create_topic(broker.url, "one")
        with pytest.raises(PikafkaError) as err:
            await producer.send("one", b"x", partition=3)
        assert err.value.code is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    with pytest.raises(PikafkaError) as err:
        async with Consumer("nope", bootstrap=broker.url):
            pass
    assert err.value.code is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


async def test_group_settings_are_checked_clearly():
    # Consumer groups exist now (docs/groups.md); only bad settings are refused up front.
    with pytest.raises(ValueError, match="group_id"):
        Consumer("t", group_id="")
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        Consumer("t", group_id="g", session_timeout_ms=1000, heartbeat_interval_ms=1000)
    with pytest.raises(ValueError, match="group"):
        Consumer("t", group_id="g").assign([("t", 0)])


async def test_admin_lifecycle(broker):
    async with Admin(broker.url) as admin:
        created = await admin.create_topic("adm", partitions=3, config={"retention_ms": 60_000})
        assert created["partitions"] == 3
        with pytest.raises(PikafkaError) as err:
            await admin.create_topic("adm")
        assert err.value.code is ErrorCode.TOPIC_ALREADY_EXISTS
        assert "adm" in await admin.list_topics()
        description = await admin.describe_topic("adm")
        assert len(description["partitions"]) == 3
        assert description["config"]["retention_ms"] == 60_000
        meta = await admin.metadata()
        assert [b["port"] for b in meta["brokers"]] == [broker.port]
        await admin.delete_topic("adm")
        assert "adm" not in await admin.list_topics()
        with pytest.raises(PikafkaError) as err:
            await admin.describe_topic("adm")
        assert err.value.code is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


async def test_clients_share_one_coap_context(broker):
    await create_topic(broker.url, "shared")
    async with Producer(broker.url) as p1, Producer(broker.url) as p2, Consumer("shared", bootstrap=broker.url) as c:
        contexts = {id(x._transport._shared.context) for x in (p1, p2, c)}
        assert len(contexts) == 1
        await p1.send_and_wait("shared", b"a")
        await p2.send_and_wait("shared", b"b")
        assert sum(map(len, (await c.getmany(timeout_ms=2000)).values())) >= 1
    assert asyncio.get_running_loop() not in transport_module._contexts


async def test_unreachable_broker_fails_fast():
    started = time.monotonic()
    with pytest.raises(PikafkaError) as err:
        async with Producer("coap://127.0.0.1:9", request_timeout_ms=2000):
            pass
    assert err.value.retriable
    assert time.monotonic() - started < 5
    assert asyncio.get_running_loop() not in transport_module._contexts
