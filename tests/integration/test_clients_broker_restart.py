"""A broker killed with SIGKILL mid-stream: acknowledged records survive, retries finish the rest, nothing doubles."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from clients import Admin, Consumer, Producer
from tests.ports import free_port

RECORDS = 12_000
PARTITIONS = 3


async def test_kill9_mid_stream_loses_nothing_acknowledged_and_duplicates_nothing(broker_factory, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="clients.producer")
    broker = broker_factory(data_dir=tmp_path / "data", port=free_port(), log_path=tmp_path / "broker.log")
    broker.start()
    async with Admin(broker.url) as admin:
        await admin.create_topic("stream", partitions=PARTITIONS)

    futures: list[asyncio.Future] = []
    acknowledged_before_kill: list[tuple[int, int, bytes]] = []
    async with Producer(
        broker.url, linger_ms=2, max_batch_bytes=16 * 1024, request_timeout_ms=3000, retry_backoff_ms=50
    ) as producer:

        async def produce() -> None:
            for i in range(RECORDS):
                futures.append(await producer.send("stream", b"%d" % i, key=b"sensor-%d" % (i % 7)))
                if i % 50 == 0:
                    await asyncio.sleep(0.002)  # spread the stream out so the kill lands in the middle of it

        live: list = []  # what a consumer reading all along sees, across the restart

        async def consume_live() -> None:
            async with Consumer("stream", bootstrap=broker.url, fetch_max_wait_ms=200) as consumer:
                while len(live) < RECORDS:
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        live.extend(batch)

        producing = asyncio.create_task(produce())
        consuming = asyncio.create_task(consume_live())
        while sum(f.done() for f in futures) < 2000:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(broker.kill9)
        acknowledged_before_kill = [
            (f.result().partition, f.result().offset, b"%d" % i)
            for i, f in enumerate(futures)
            if f.done() and not f.exception()
        ]
        assert not producing.done(), "the stream ended before the kill; make it longer"
        await asyncio.sleep(0.5)
        await asyncio.to_thread(broker.start)
        await producing
        await producer.flush()
        metas = [f.result() for f in futures]  # every record was eventually delivered
        await asyncio.wait_for(consuming, 30)

    records = []
    async with Consumer("stream", bootstrap=broker.url) as consumer:
        deadline = time.monotonic() + 30
        while len(records) < RECORDS and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend(batch)

    values = Counter(r.value for r in records)
    duplicates = [v for v, n in values.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} records written twice, e.g. {duplicates[:5]}"
    assert len(records) == RECORDS
    at = {(r.partition, r.offset): r.value for r in records}
    for partition, offset, value in acknowledged_before_kill:
        assert at[(partition, offset)] == value
    for i, meta in enumerate(metas):
        assert at[(meta.partition, meta.offset)] == b"%d" % i
    assert len(acknowledged_before_kill) >= 2000
    assert sorted((r.partition, r.offset, r.value) for r in live) == sorted(
        (r.partition, r.offset, r.value) for r in records
    )
    assert "retrying" in caplog.text  # the kill really interrupted the stream
