"""Bad input, one case per test: each gets its 4.xx code with a one-line `NAME: reason` payload, and afterwards the
broker is alive and every record acknowledged before it is still readable."""

from __future__ import annotations

import asyncio

import pytest
from aiocoap import Code

from pikafka.errors import ErrorCode
from pikafka.protocol import CT_CBOR, CT_JSON, CT_TEXT
from pikafka.records import Record, encode_batch
from tests.conftest import BrokerProcess
from tests.integration.broker_coap import SEED_TOPIC, SEED_VALUES, assert_alive_with_seed, connect
from tests.ports import free_port


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One broker for the whole module: every bad request below hits the same process, which must survive them all
    (tests use their own topics for anything they write, so they stay independent)."""
    tmp = tmp_path_factory.mktemp("bad-input")
    process = BrokerProcess(data_dir=tmp / "data", port=free_port(), log_path=tmp / "broker.log")
    process.start()
    asyncio.run(_seed(process.port))
    try:
        yield process
    finally:
        if process.alive():
            assert process.terminate() == 0


async def _seed(port: int) -> None:
    client = await connect(port)
    try:
        await client.create_topic(SEED_TOPIC, partitions=2)
        await client.produce_values(SEED_TOPIC, SEED_VALUES)
    finally:
        await client.close()


@pytest.fixture
async def client(broker):
    client = await connect(broker.port)
    try:
        yield client
        assert broker.alive()
    finally:
        await client.close()


def one_batch(value: bytes = b"v") -> bytes:
    return encode_batch([Record(value=value)])


async def test_produce_to_unknown_topic(client):
    reply = await client.produce("nope", [one_batch()])
    reply.assert_error("4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    assert "nope" in reply.text
    await assert_alive_with_seed(client)


async def test_fetch_unknown_topic(client):
    (await client.fetch("nope", 0)).assert_error("4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    await assert_alive_with_seed(client)


async def test_unknown_partition(client):
    (await client.produce(SEED_TOPIC, [one_batch()], partition=2)).assert_error(
        "4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    )
    (await client.fetch(SEED_TOPIC, 0, partition=-1)).assert_error("4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    await assert_alive_with_seed(client)


async def test_one_bad_partition_appends_nothing(client):
    body = {
        "acks": 1,
        "batches": [
            {"topic": SEED_TOPIC, "partition": 0, "records": one_batch(b"must-not-appear")},
            {"topic": SEED_TOPIC, "partition": 7, "records": one_batch()},
        ],
    }
    (await client.cbor(Code.POST, "/produce", body)).assert_error("4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    await assert_alive_with_seed(client)


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "nul\x00name", "", "x" * 250, 42, None, ["list"], ".", "..", "ünïcode", "sp ace"],
    ids=[
        "dotdot-slash",
        "slash",
        "nul",
        "empty",
        "250-chars",
        "int",
        "null",
        "array",
        "dot",
        "dotdot",
        "unicode",
        "space",
    ],
)
async def test_bad_topic_name(client, broker, name):
    before = sorted(p.name for p in broker.data_dir.iterdir())
    reply = await client.cbor(Code.POST, "/topics", {"name": name})
    reply.assert_error("4.00", ErrorCode.INVALID_TOPIC)
    await assert_alive_with_seed(client)
    assert sorted(p.name for p in broker.data_dir.iterdir()) == before
    assert not (broker.data_dir.parent / "x").exists() and not (broker.data_dir.parent / "x-0").exists()


async def test_bad_topic_settings(client):
    reply = await client.cbor(Code.POST, "/topics", {"name": "ok", "partitions": 0})
    reply.assert_error("4.00", ErrorCode.INVALID_PARTITIONS)
    reply = await client.cbor(Code.POST, "/topics", {"name": "ok", "replication_factor": 3})
    reply.assert_error("4.00", ErrorCode.INVALID_REPLICATION_FACTOR)
    reply = await client.cbor(Code.POST, "/topics", {"name": "ok", "config": {"segment_bytes": 1}})
    reply.assert_error("4.00", ErrorCode.INVALID_CONFIG)
    reply = await client.cbor(Code.POST, "/topics", {"name": "ok", "config": {"colour": 1}})
    reply.assert_error("4.00", ErrorCode.INVALID_CONFIG)
    assert "ok" not in (await client.request(Code.GET, "/topics")).body["topics"]
    await assert_alive_with_seed(client)


async def test_negative_offset(client):
    (await client.fetch(SEED_TOPIC, -1)).assert_error("4.00", ErrorCode.OFFSET_OUT_OF_RANGE)
    await assert_alive_with_seed(client)


async def test_offset_beyond_log_end(client):
    reply = await client.fetch(SEED_TOPIC, len(SEED_VALUES) + 1)
    reply.assert_error("4.00", ErrorCode.OFFSET_OUT_OF_RANGE)
    await assert_alive_with_seed(client)


async def test_oversize_request_over_tcp(broker_factory, tmp_path):
    config = tmp_path / "broker.toml"
    config.write_text("max_request_bytes = 65536\n")
    broker = broker_factory(
        data_dir=tmp_path / "small",
        port=free_port(),
        log_path=tmp_path / "small.log",
        extra_args=["--config", str(config)],
    )
    broker.start()
    client = await connect(broker.port)
    try:
        await client.create_topic(SEED_TOPIC)
        await client.produce_values(SEED_TOPIC, SEED_VALUES)
        big = encode_batch([Record(value=b"x" * 50_000), Record(value=b"y" * 50_000)])
        reply = await client.produce(SEED_TOPIC, [big])
        reply.assert_error("4.13", ErrorCode.RECORD_TOO_LARGE)
        assert "max_request_bytes" in reply.text
        await assert_alive_with_seed(client)
    finally:
        await client.close()
        # broker_factory's teardown misses instances (its __post_init__ is never called by the dataclass __init__).
        broker.terminate()


async def test_large_request_within_limit_over_tcp(client):
    # Two batches of ~900 KB in one 1.8 MB request: above aiocoap's default 1 MiB TCP message limit, below the
    # broker's 4 MiB max_request_bytes.
    await client.create_topic("large")
    batches = [encode_batch([Record(value=bytes([i]) * 900_000)]) for i in range(2)]
    reply = await client.produce("large", [batches[0] + batches[1]])
    assert reply.code == Code.CHANGED, reply
    assert [len(v or b"") for v in await client.read_values("large")] == [900_000, 900_000]
    await assert_alive_with_seed(client)


async def test_batch_over_topic_max_message_bytes(client):
    await client.create_topic("small-messages", max_message_bytes=1024)
    reply = await client.produce("small-messages", [one_batch(b"z" * 2000)])
    reply.assert_error("4.13", ErrorCode.RECORD_TOO_LARGE)
    await assert_alive_with_seed(client)


@pytest.mark.parametrize("path", ["/produce", "/fetch", "/topics"])
async def test_undecodable_cbor(client, path):
    reply = await client.request(Code.POST, path, b"\xff\x00\x1f not cbor", content_format=CT_CBOR)
    reply.assert_error("4.00", ErrorCode.INVALID_REQUEST)
    assert "CBOR" in reply.text
    await assert_alive_with_seed(client)


async def test_invalid_json_to_admin(client):
    reply = await client.request(Code.POST, "/topics", b"{not json", content_format=CT_JSON)
    reply.assert_error("4.00", ErrorCode.INVALID_REQUEST)
    await assert_alive_with_seed(client)


@pytest.mark.parametrize(
    "body",
    [
        [1, 2, 3],
        "a string",
        {},
        {"batches": "nope"},
        {"batches": []},
        {"batches": [{"topic": SEED_TOPIC, "partition": 0}]},
        {"batches": [{"topic": SEED_TOPIC, "partition": "0", "records": b"x"}]},
        {"batches": [{"topic": 5, "partition": 0, "records": b"x"}]},
        {"batches": [{"topic": SEED_TOPIC, "partition": 0, "records": "text not bytes"}]},
        {"batches": [7]},
        {"acks": "all", "batches": []},
        {"timeout_ms": -5, "batches": []},
    ],
    ids=[
        "array",
        "text",
        "empty-map",
        "batches-not-array",
        "batches-empty",
        "no-records",
        "partition-text",
        "topic-int",
        "records-text",
        "batch-not-map",
        "acks-text",
        "negative-timeout",
    ],
)
async def test_malformed_produce_body(client, body):
    (await client.cbor(Code.POST, "/produce", body)).assert_error("4.00", ErrorCode.INVALID_REQUEST)
    await assert_alive_with_seed(client)


@pytest.mark.parametrize(
    "body",
    [
        {"partitions": [{"topic": SEED_TOPIC, "partition": 0}]},
        {"partitions": [{"topic": SEED_TOPIC, "partition": 0, "offset": 1.5}]},
        {"partitions": [{"topic": SEED_TOPIC, "partition": 0, "offset": 0}], "max_bytes": 0},
        {"partitions": [{"topic": SEED_TOPIC, "partition": 0, "offset": 0}], "wait_ms": -1},
        {"partitions": [{"topic": SEED_TOPIC, "partition": 0, "offset": 0}], "max_records": True},
        {"partitions": {}},
        42,
    ],
    ids=["no-offset", "float-offset", "zero-max-bytes", "negative-wait", "bool-max-records", "map-partitions", "int"],
)
async def test_malformed_fetch_body(client, body):
    (await client.cbor(Code.FETCH, "/fetch", body)).assert_error("4.00", ErrorCode.INVALID_REQUEST)
    await assert_alive_with_seed(client)


async def test_wrong_content_format(client):
    reply = await client.request(Code.POST, "/produce", b"hello", content_format=CT_TEXT)
    reply.assert_error("4.15", ErrorCode.UNSUPPORTED_CONTENT_FORMAT)
    reply = await client.request(Code.POST, "/fetch", b"{}", content_format=CT_JSON)
    reply.assert_error("4.15", ErrorCode.UNSUPPORTED_CONTENT_FORMAT)
    await assert_alive_with_seed(client)


async def test_unacceptable_accept(client):
    reply = await client.request(Code.GET, "/topics", accept=CT_TEXT)
    reply.assert_error("4.06", ErrorCode.NOT_ACCEPTABLE)
    await assert_alive_with_seed(client)


async def test_wrong_method(client):
    reply = await client.request(Code.DELETE, "/produce")
    reply.assert_error("4.05", ErrorCode.METHOD_NOT_ALLOWED)
    assert "POST" in reply.text
    (await client.request(Code.PUT, "/metadata", tcp=False)).assert_error("4.05", ErrorCode.METHOD_NOT_ALLOWED)
    await assert_alive_with_seed(client)


async def test_unknown_path(client):
    reply = await client.request(Code.GET, "/no/such/thing", tcp=False)
    reply.assert_error("4.04", ErrorCode.NOT_FOUND)
    assert "/no/such/thing" in reply.text
    await assert_alive_with_seed(client)


async def test_corrupt_batch_crc(client):
    batch = bytearray(one_batch(b"flip me"))
    batch[-3] ^= 0xFF
    reply = await client.produce(SEED_TOPIC, [bytes(batch)])
    reply.assert_error("4.00", ErrorCode.CORRUPT_MESSAGE)
    assert "CRC" in reply.text
    await assert_alive_with_seed(client)


@pytest.mark.parametrize(
    "records",
    [b"", b"\x00" * 10, one_batch() + b"\x00\x01", one_batch()[:-4]],
    ids=["empty", "short", "trailing-garbage", "truncated"],
)
async def test_malformed_batch_framing(client, records):
    (await client.produce(SEED_TOPIC, [records])).assert_error("4.00", ErrorCode.CORRUPT_MESSAGE)
    await assert_alive_with_seed(client)


async def test_sequence_gap(client):
    await client.create_topic("sequenced")
    pid = 4242
    first = encode_batch([Record(value=b"s0")], producer_id=pid, producer_epoch=0, base_sequence=0)
    assert (await client.produce("sequenced", [first])).code == Code.CHANGED
    gap = encode_batch([Record(value=b"s5")], producer_id=pid, producer_epoch=0, base_sequence=5)
    reply = await client.produce("sequenced", [gap])
    reply.assert_error("4.09", ErrorCode.OUT_OF_ORDER_SEQUENCE)
    assert await client.read_values("sequenced") == [b"s0"]
    await assert_alive_with_seed(client)


@pytest.mark.parametrize("acks", [2, -2, 100])
async def test_bad_acks(client, acks):
    (await client.produce(SEED_TOPIC, [one_batch()], acks=acks)).assert_error("4.00", ErrorCode.INVALID_ACKS)
    await assert_alive_with_seed(client)


async def test_create_existing_topic(client):
    reply = await client.cbor(Code.POST, "/topics", {"name": SEED_TOPIC})
    reply.assert_error("4.09", ErrorCode.TOPIC_ALREADY_EXISTS)
    await assert_alive_with_seed(client)
