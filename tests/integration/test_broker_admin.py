"""Topic administration over CoAP: create, list, describe, delete in CBOR and JSON; metadata; discovery."""

from __future__ import annotations

import json

from aiocoap import Code

from pikafka.errors import ErrorCode
from pikafka.protocol import CT_JSON, CT_LINK_FORMAT


async def test_topic_round_trip_cbor(client, broker):
    reply = await client.cbor(
        Code.POST, "/topics", {"name": "temps", "partitions": 3, "config": {"retention_ms": 3_600_000}}
    )
    assert reply.code == Code.CREATED and reply.body == {"name": "temps", "partitions": 3}
    await client.create_topic("alpha")

    reply = await client.request(Code.GET, "/topics")
    assert reply.body == {"topics": ["alpha", "temps"]}

    described = (await client.request(Code.GET, "/topics/temps")).body
    assert described["name"] == "temps" and described["replication_factor"] == 1
    assert described["config"]["retention_ms"] == 3_600_000
    assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
    first = described["partitions"][0]
    assert first["leader"] == 1 and first["replicas"] == [1] and first["isr"] == [1] and first["leader_epoch"] == 0
    assert first["log_start_offset"] == first["log_end_offset"] == first["high_watermark"] == 0
    assert (broker.data_dir / "temps-2").is_dir()

    reply = await client.request(Code.DELETE, "/topics/temps")
    assert reply.code == Code.DELETED
    assert (await client.request(Code.GET, "/topics")).body == {"topics": ["alpha"]}
    assert not (broker.data_dir / "temps-0").exists()
    (await client.request(Code.GET, "/topics/temps")).assert_error("4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    (await client.request(Code.DELETE, "/topics/temps")).assert_error("4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)

    # The name is free again, and the new topic starts empty.
    await client.create_topic("temps")
    assert (await client.request(Code.GET, "/topics/temps")).body["partitions"][0]["log_end_offset"] == 0


async def test_topic_round_trip_json_over_udp(client):
    body = json.dumps({"name": "json-topic", "partitions": 2}).encode()
    reply = await client.request(Code.POST, "/topics", body, content_format=CT_JSON, tcp=False)
    assert reply.code == Code.CREATED and reply.content_format == CT_JSON
    assert reply.body == {"name": "json-topic", "partitions": 2}
    reply = await client.request(Code.GET, "/topics", accept=CT_JSON, tcp=False)
    assert reply.content_format == CT_JSON and reply.body == {"topics": ["json-topic"]}
    reply = await client.request(Code.GET, "/topics/json-topic", accept=CT_JSON, tcp=False)
    assert reply.body["name"] == "json-topic" and len(reply.body["partitions"]) == 2
    reply = await client.request(Code.DELETE, "/topics/json-topic", tcp=False)
    assert reply.code == Code.DELETED


async def test_topics_survive_restart(client, broker):
    await client.create_topic("kept", partitions=2)
    assert broker.terminate() == 0
    broker.start()
    await client.reconnect()
    assert (await client.request(Code.GET, "/topics")).body == {"topics": ["kept"]}


async def test_metadata_and_discovery(client, broker):
    await client.create_topic("m1", partitions=2)
    await client.create_topic("m2")
    meta = (await client.request(Code.GET, "/metadata")).body
    assert meta["controller"] is None and isinstance(meta["cluster_id"], str) and meta["cluster_id"]
    assert meta["brokers"] == [{"id": 1, "host": "127.0.0.1", "port": broker.port}]
    assert [t["name"] for t in meta["topics"]] == ["m1", "m2"]
    assert meta["topics"][0]["partitions"][1] == {
        "partition": 1,
        "leader": 1,
        "leader_epoch": 0,
        "replicas": [1],
        "isr": [1],
    }
    only = (await client.request(Code.GET, "/metadata?topic=m2")).body
    assert [t["name"] for t in only["topics"]] == ["m2"]

    wkc = await client.request(Code.GET, "/.well-known/core", tcp=False)
    assert wkc.content_format == CT_LINK_FORMAT
    for link in ("</topics>", "</produce>", "</fetch>", "</metadata>", "</ps/data/m1>", "</ps/data/m2>"):
        assert link in wkc.text, wkc.text
    ps = await client.request(Code.GET, "/ps", tcp=False)
    assert ps.text == '</ps/data/m1>;rt="core.ps.data";obs,</ps/data/m2>;rt="core.ps.data";obs'


async def test_unknown_path_and_wrong_method(client):
    (await client.request(Code.GET, "/nowhere/at/all")).assert_error("4.04", ErrorCode.NOT_FOUND)
    (await client.request(Code.PUT, "/topics")).assert_error("4.05", ErrorCode.METHOD_NOT_ALLOWED)
    (await client.request(Code.GET, "/topics/a/b")).assert_error("4.04", ErrorCode.NOT_FOUND)
