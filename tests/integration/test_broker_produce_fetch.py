"""Produce and fetch of raw record batches over CoAP: round trip, long poll, idempotence, acks and limits."""

from __future__ import annotations

import asyncio
import time

import cbor2
from aiocoap import Code, Message, Unreliable

from pikafka.errors import ErrorCode
from pikafka.records import Record, decode_records, encode_batch, iter_batches


async def test_produce_then_fetch_round_trip(client):
    await client.create_topic("events", partitions=2)
    batch = encode_batch(
        [Record(value=b"one", key=b"k1", headers=[("h", b"x")]), Record(value=None, key=b"k2"), Record(value=b"three")]
    )
    # One `records` holding two batches: one result, first base offset to last last offset.
    reply = await client.produce("events", [batch + encode_batch([Record(value=b"four")])], partition=1)
    assert reply.code == Code.CHANGED
    assert reply.body == {"results": [{"topic": "events", "partition": 1, "base_offset": 0, "last_offset": 3}]}

    fetched = await client.fetch("events", 0, partition=1)
    entry = fetched.body["partitions"][0]
    assert entry["high_watermark"] == 4 and entry["log_start_offset"] == 0
    records = [r for _, b in iter_batches(entry["records"]) for r in decode_records(b)]
    assert [(r.offset, r.key, r.value) for r in records] == [
        (0, b"k1", b"one"),
        (1, b"k2", None),
        (2, None, b"three"),
        (3, None, b"four"),
    ]
    assert records[0].headers == (("h", b"x"),)
    # The other partition is untouched, and fetching at the high watermark is valid and empty.
    assert (await client.fetch("events", 0, partition=0)).body["partitions"][0]["records"] == b""
    assert (await client.fetch("events", 4, partition=1)).body["partitions"][0]["records"] == b""


async def test_fetch_from_middle_and_limits(client):
    await client.create_topic("many")
    for i in range(5):
        await client.produce_values("many", [f"v{i}a".encode(), f"v{i}b".encode()])
    entry = (await client.fetch("many", 5)).body["partitions"][0]
    first_batch = next(iter_batches(entry["records"]))[0]
    assert first_batch.base_offset == 4  # whole batches, starting with the one holding offset 5
    entry = (await client.fetch("many", 0, max_records=3)).body["partitions"][0]
    assert [h.base_offset for h, _ in iter_batches(entry["records"])] == [0, 2]
    entry = (await client.fetch("many", 0, max_bytes=1)).body["partitions"][0]
    assert len(list(iter_batches(entry["records"]))) == 1  # at least one batch whatever the budget
    assert await client.read_values("many") == [f"v{i}{s}".encode() for i in range(5) for s in "ab"]


async def test_long_poll_returns_when_a_produce_lands(client):
    await client.create_topic("poll")
    started = time.monotonic()
    waiting = asyncio.create_task(client.fetch("poll", 0, wait_ms=10_000))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await client.produce_values("poll", [b"wake"])
    reply = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 5
    entry = reply.body["partitions"][0]
    assert [r.value for _, b in iter_batches(entry["records"]) for r in decode_records(b)] == [b"wake"]


async def test_long_poll_times_out_empty(client):
    await client.create_topic("quiet")
    started = time.monotonic()
    reply = await client.fetch("quiet", 0, wait_ms=400)
    elapsed = time.monotonic() - started
    assert reply.code == Code.CONTENT and reply.body["partitions"][0]["records"] == b""
    assert 0.35 <= elapsed < 3


async def test_idempotent_retry_is_written_once(client):
    await client.create_topic("idem")
    pid = 2**40 + 17
    first = encode_batch([Record(value=b"a"), Record(value=b"b")], producer_id=pid, producer_epoch=0, base_sequence=0)
    second = encode_batch([Record(value=b"c")], producer_id=pid, producer_epoch=0, base_sequence=2)
    r1 = (await client.produce("idem", [first])).body["results"][0]
    r2 = (await client.produce("idem", [second])).body["results"][0]
    again = (await client.produce("idem", [first])).body["results"][0]
    assert (r1["base_offset"], r1["last_offset"]) == (0, 1) and (r2["base_offset"], r2["last_offset"]) == (2, 2)
    assert (again["base_offset"], again["last_offset"]) == (0, 1)
    assert await client.read_values("idem") == [b"a", b"b", b"c"]

    gap = encode_batch([Record(value=b"x")], producer_id=pid, producer_epoch=0, base_sequence=9)
    (await client.produce("idem", [gap])).assert_error("4.09", ErrorCode.OUT_OF_ORDER_SEQUENCE)
    old = encode_batch([Record(value=b"x")], producer_id=pid, producer_epoch=0, base_sequence=3)
    assert (await client.produce("idem", [old])).code == Code.CHANGED  # same epoch, next sequence: fine
    bumped = encode_batch([Record(value=b"y")], producer_id=pid, producer_epoch=1, base_sequence=0)
    assert (await client.produce("idem", [bumped])).code == Code.CHANGED
    fenced = encode_batch([Record(value=b"z")], producer_id=pid, producer_epoch=0, base_sequence=4)
    (await client.produce("idem", [fenced])).assert_error("4.09", ErrorCode.INVALID_PRODUCER_EPOCH)
    assert await client.read_values("idem") == [b"a", b"b", b"c", b"x", b"y"]


async def test_idempotence_survives_restart(client, broker):
    await client.create_topic("idem-restart")
    pid = 99
    batch = encode_batch([Record(value=b"once")], producer_id=pid, producer_epoch=0, base_sequence=0)
    assert (await client.produce("idem-restart", [batch])).code == Code.CHANGED
    broker.kill9()
    broker.start()
    await client.reconnect()
    again = (await client.produce("idem-restart", [batch])).body["results"][0]
    assert again["base_offset"] == 0
    assert await client.read_values("idem-restart") == [b"once"]


async def test_acks_zero_and_minus_one(client):
    await client.create_topic("acks")
    batch = encode_batch([Record(value=b"all")])
    assert (await client.produce("acks", [batch], acks=-1)).code == Code.CHANGED
    # acks=0 clients send No-Response (26: no answer at all) as NON; the write still happens.
    body = {"acks": 0, "batches": [{"topic": "acks", "partition": 0, "records": encode_batch([Record(value=b"ff")])}]}
    message = Message(
        code=Code.POST,
        transport_tuning=Unreliable,
        uri=client.uri("/produce", tcp=False),
        payload=cbor2.dumps(body),
        content_format=60,
    )
    message.opt.no_response = 26
    client.context.request(message)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if await client.read_values("acks") == [b"all", b"ff"]:
            break
        await asyncio.sleep(0.05)
    assert await client.read_values("acks") == [b"all", b"ff"]


async def test_many_concurrent_producers_share_fsyncs(client):
    await client.create_topic("group", partitions=2)
    replies = await asyncio.gather(
        *(client.produce("group", [encode_batch([Record(value=f"{i}".encode())])], partition=i % 2) for i in range(60))
    )
    assert all(r.code == Code.CHANGED for r in replies)
    values = await client.read_values("group", 0) + await client.read_values("group", 1)
    assert sorted(values) == sorted(f"{i}".encode() for i in range(60))


async def test_lazy_flush_topic_acks_and_becomes_visible(client):
    await client.create_topic("lazy", flush_interval_ms=200)
    started = time.monotonic()
    await client.produce_values("lazy", [b"soon"])
    reply = await client.fetch("lazy", 0, wait_ms=5000)
    assert reply.body["partitions"][0]["high_watermark"] == 1
    assert time.monotonic() - started < 3
