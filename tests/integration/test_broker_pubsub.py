"""The topic-data resources (/ps/data/{topic}) with aiocoap and with libcoap's stock coap-client."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest
from aiocoap import Code, Message

from pikafka.errors import ErrorCode
from pikafka.protocol import CT_JSON, CT_TEXT
from pikafka.records import decode_records, iter_batches

COAP_CLIENT = shutil.which("coap-client-notls") or "/usr/bin/coap-client-notls"


async def test_put_then_get_latest(client):
    await client.create_topic("t")
    (await client.request(Code.GET, "/ps/data/t", tcp=False)).assert_error("4.04", ErrorCode.NOT_FOUND)
    reply = await client.request(Code.PUT, "/ps/data/t", b"21.5", content_format=CT_TEXT, tcp=False)
    assert reply.code == Code.CHANGED and reply.text == "partition=0 offset=0"
    reply = await client.request(Code.POST, "/ps/data/t?k=sensor-7", b'{"t": 22}', content_format=CT_JSON, tcp=False)
    assert reply.code == Code.CHANGED and reply.text == "partition=0 offset=1"
    latest = await client.request(Code.GET, "/ps/data/t", tcp=False)
    assert latest.code == Code.CONTENT and latest.payload == b'{"t": 22}' and latest.content_format == CT_JSON
    # The readings are ordinary records: key and content-format header included.
    entry = (await client.fetch("t", 0)).body["partitions"][0]
    records = [r for _, b in iter_batches(entry["records"]) for r in decode_records(b)]
    assert [(r.key, r.value, r.headers) for r in records] == [
        (b"127.0.0.1", b"21.5", (("ct", b"0"),)),
        (b"sensor-7", b'{"t": 22}', (("ct", b"50"),)),
    ]
    (await client.request(Code.PUT, "/ps/data/absent", b"x", tcp=False)).assert_error(
        "4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    )
    (await client.request(Code.DELETE, "/ps/data/t", tcp=False)).assert_error("4.05", ErrorCode.METHOD_NOT_ALLOWED)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_observe_receives_every_reading_in_order(client, tcp):
    await client.create_topic("obs", partitions=3)
    await client.request(Code.PUT, "/ps/data/obs?k=s1", b"before", tcp=tcp)
    observation = client.context.request(Message(code=Code.GET, uri=client.uri("/ps/data/obs", tcp), observe=0))
    first = await observation.response
    assert first.payload == b"before"
    received: list[bytes] = []
    all_arrived = asyncio.Event()

    def on_notification(notification: Message) -> None:
        received.append(notification.payload)
        if len(received) == len(readings):
            all_arrived.set()

    # The callback sees every notification; aiocoap's `async for` keeps only the newest unread one.
    observation.observation.register_callback(on_notification, _suppress_deprecation=True)
    readings = [f"r{i}".encode() for i in range(15)]
    for value in readings:
        await client.request(Code.PUT, "/ps/data/obs?k=s1", value, content_format=CT_TEXT, tcp=tcp)
    await asyncio.wait_for(all_arrived.wait(), 10)
    assert received == readings
    observation.observation.cancel()


async def test_observe_burst_sharing_fsync_rounds(client):
    # Concurrent appends become durable together in one group-commit round; the broker still sends one notification
    # per record (a lossy trigger() would collapse them). aiocoap's client may itself skip notifications that arrive
    # back to back over TCP, so this checks over UDP and allows only order-preserving loss on the client side.
    await client.create_topic("burst")
    observation = client.context.request(Message(code=Code.GET, uri=client.uri("/ps/data/burst", False), observe=0))
    await observation.response
    received: list[bytes] = []
    readings = [f"b{i:02d}".encode() for i in range(12)]
    last_arrived = asyncio.Event()

    def on_notification(notification: Message) -> None:
        received.append(notification.payload)
        if notification.payload == readings[-1]:
            last_arrived.set()

    observation.observation.register_callback(on_notification, _suppress_deprecation=True)
    await asyncio.gather(*(client.request(Code.PUT, "/ps/data/burst?k=s", v, tcp=False) for v in readings[:-1]))
    await client.request(Code.PUT, "/ps/data/burst?k=s", readings[-1], tcp=False)
    await asyncio.wait_for(last_arrived.wait(), 10)
    assert set(received) <= set(readings) and len(received) >= 2
    stored = await client.read_values("burst")
    assert sorted(v or b"" for v in stored) == readings and received == [v for v in stored if v in received]
    observation.observation.cancel()


async def test_observe_empty_topic_then_deleted(client):
    await client.create_topic("fresh")
    observation = client.context.request(Message(code=Code.GET, uri=client.uri("/ps/data/fresh", False), observe=0))
    first = await observation.response
    assert first.code == Code.CONTENT and first.payload == b""
    await client.request(Code.PUT, "/ps/data/fresh", b"hello", tcp=False)
    iterator = observation.observation.__aiter__()
    notification = await asyncio.wait_for(iterator.__anext__(), 5)
    assert notification.payload == b"hello"
    observation.observation.cancel()


async def test_large_reading_blockwise_over_udp(client):
    await client.create_topic("big")
    payload = bytes(range(256)) * 11 + b"tail" * 46  # 3000 bytes: Block1 up, Block2 down
    assert len(payload) == 3000
    reply = await client.request(Code.PUT, "/ps/data/big", payload, tcp=False)
    assert reply.code == Code.CHANGED
    latest = await client.request(Code.GET, "/ps/data/big", tcp=False)
    assert latest.payload == payload
    assert await client.read_values("big") == [payload]


async def test_reading_over_max_message_bytes(client):
    await client.create_topic("tiny", max_message_bytes=1024)
    reply = await client.request(Code.PUT, "/ps/data/tiny", b"x" * 3000, tcp=False)
    reply.assert_error("4.13", ErrorCode.RECORD_TOO_LARGE)


def coap_client(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([COAP_CLIENT, "-B", "5", *args], capture_output=True, timeout=20)


@pytest.mark.skipif(not shutil.which(COAP_CLIENT), reason="coap-client-notls (libcoap3-bin) is not installed")
async def test_stock_coap_client_put_and_get(client, broker, tmp_path):
    await client.create_topic("t")
    base = f"coap://127.0.0.1:{broker.port}"
    put = await asyncio.to_thread(coap_client, "-m", "put", "-e", "reading", f"{base}/ps/data/t")
    assert put.returncode == 0, put
    get = await asyncio.to_thread(coap_client, "-m", "get", f"{base}/ps/data/t")
    assert get.returncode == 0 and get.stdout.strip() == b"reading", get

    big = tmp_path / "big.bin"
    data = b"0123456789abcdef" * 200  # 3200 bytes, block-wise in 1024-byte blocks
    big.write_bytes(data)
    put = await asyncio.to_thread(coap_client, "-m", "put", "-b", "1024", "-f", str(big), f"{base}/ps/data/t")
    assert put.returncode == 0, put
    out = tmp_path / "out.bin"
    get = await asyncio.to_thread(coap_client, "-m", "get", "-o", str(out), f"{base}/ps/data/t")
    assert get.returncode == 0 and out.read_bytes() == data, get
    assert await client.read_values("t") == [b"reading", data]

    wkc = await asyncio.to_thread(coap_client, "-m", "get", f"{base}/.well-known/core")
    assert b"</ps/data/t>" in wkc.stdout
    missing = await asyncio.to_thread(coap_client, "-m", "get", f"{base}/ps/data/none")
    assert b"UNKNOWN_TOPIC_OR_PARTITION" in missing.stdout + missing.stderr


async def test_sigterm_with_an_active_observation(client, broker):
    await client.create_topic("watched")
    observation = client.context.request(Message(code=Code.GET, uri=client.uri("/ps/data/watched", True), observe=0))
    await observation.response
    started = time.monotonic()
    assert broker.terminate() == 0
    assert time.monotonic() - started < 2.0
    assert "Traceback" not in broker.log_path.read_text()
