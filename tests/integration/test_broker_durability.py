"""Crash and shutdown: kill -9 loses no acknowledged record and wipes nothing; SIGTERM exits 0 quickly.

Every test runs twice: with the group commit's fsyncs on the fsync threads, and on the event loop (where a broker on
a fast disk puts them once it has timed 16 rounds; pi_broker/fsync_placement.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiocoap import Code

from pikafka.records import Record, encode_batch
from tests.conftest import REPO, BrokerProcess, running_broker
from tests.ports import free_port

ON_LOOP = "fsyncs move to the event loop"


@pytest.fixture(params=["threads", "loop"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
    # 0: never on the loop; 1000: on the loop as soon as 16 rounds were timed, whatever the disk
    budget_ms = "0" if request.param == "threads" else "1000"
    with running_broker(tmp_path, ["--loop-fsync-max-ms", budget_ms]) as b:
        yield b


async def test_kill9_keeps_every_acknowledged_record(client, broker):
    await client.create_topic("durable", partitions=2)
    await client.create_topic("lazy", flush_interval_ms=60_000)
    acknowledged: dict[int, list[bytes]] = {0: [], 1: []}
    for i in range(40):
        partition = i % 2
        value = f"reading-{i}".encode()
        await client.produce_values("durable", [value], partition=partition)
        acknowledged[partition].append(value)
    # Concurrent producers too: their acks come from shared fsyncs.
    values = [f"burst-{i}".encode() for i in range(30)]
    replies = await asyncio.gather(*(client.produce("durable", [encode_batch([Record(value=v)])]) for v in values))
    assert all(r.code == Code.CHANGED for r in replies)
    acknowledged[0].extend(sorted(values, key=lambda v: int(v.split(b"-")[1])))
    before = (await client.request(Code.GET, "/topics/durable")).body["partitions"]
    # Which path those acknowledgements took: the loop's own fsyncs, or only the threads'.
    assert (ON_LOOP in broker.log_path.read_text()) == (broker.extra_args[-1] != "0")

    broker.kill9()
    broker.start()
    await client.reconnect()

    after = (await client.request(Code.GET, "/topics/durable")).body["partitions"]
    for old, new in zip(before, after, strict=True):
        assert new["log_end_offset"] >= old["log_end_offset"]
        assert new["high_watermark"] == new["log_end_offset"]
        assert new["log_start_offset"] == 0
    assert (await client.read_values("durable", 1)) == acknowledged[1]
    assert sorted(await client.read_values("durable", 0)) == sorted(acknowledged[0])
    assert (await client.request(Code.GET, "/topics")).body == {"topics": ["durable", "lazy"]}
    # kill -9 cannot tear a write (the page cache holds it whole): all recovery found to cut in each partition of
    # "durable" was the space its segment had reserved ahead of the appends, and none of that counts as torn.
    log_text = broker.log_path.read_text()
    assert log_text.count("bytes of space reserved after the last batch") == 2
    assert "torn or corrupt" not in log_text


async def test_sigterm_exits_zero_within_two_seconds_and_flushes(client, broker):
    await client.create_topic("graceful", flush_interval_ms=60_000)
    await client.produce_values("graceful", [b"acked-before-fsync"])
    # An open long poll must not hold up the shutdown.
    pending = asyncio.create_task(client.fetch("graceful", 1, wait_ms=20_000))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert broker.terminate() == 0
    assert time.monotonic() - started < 2.0
    # The broker closed the connection under the long poll: the client sees an error (or, rarely, an answer).
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pending, 5)
    log_text = broker.log_path.read_text()
    assert "Traceback" not in log_text
    broker.start()
    await client.reconnect()
    assert await client.read_values("graceful") == [b"acked-before-fsync"]


async def test_restart_twice_keeps_appending(client, broker):
    await client.create_topic("again")
    await client.produce_values("again", [b"a"])
    for _ in range(2):
        broker.kill9()
        broker.start()
        await client.reconnect()
        await client.produce_values("again", [b"b"])
    assert await client.read_values("again") == [b"a", b"b", b"b"]


def run_broker(data_dir, port: int) -> subprocess.CompletedProcess[bytes]:
    args = ["--id", "1", "--bind", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    return subprocess.run([sys.executable, "-m", "pi_broker.service", *args], cwd=REPO, capture_output=True, timeout=20)


async def test_second_broker_on_same_port_or_data_dir_refuses_to_start(broker, tmp_path):
    # aiocoap binds with SO_REUSEPORT: without the broker's own check a second one would start and share the port.
    same_port = await asyncio.to_thread(run_broker, tmp_path / "other", broker.port)
    assert same_port.returncode == 1 and b"in use" in same_port.stderr, same_port
    same_dir = await asyncio.to_thread(run_broker, broker.data_dir, free_port())
    assert same_dir.returncode == 1 and b"in use by another broker" in same_dir.stderr, same_dir
    assert broker.alive()
