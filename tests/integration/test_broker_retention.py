"""The broker's periodic retention task against a real process: old whole segments go, the rest stays readable."""

from __future__ import annotations

import asyncio
import time

import pytest

from clients import Admin, Consumer, Producer, TopicPartition
from tests.conftest import BrokerProcess
from tests.ports import free_port


@pytest.fixture
def retaining_broker(broker_factory, tmp_path):
    config = tmp_path / "broker.toml"
    config.write_text("retention_check_interval_ms = 1000\n")
    broker: BrokerProcess = broker_factory(
        data_dir=tmp_path / "data",
        port=free_port(),
        log_path=tmp_path / "broker.log",
        extra_args=["--config", str(config)],
    )
    broker.start()
    return broker


async def test_retention_by_bytes_deletes_old_segments_only(retaining_broker):
    broker = retaining_broker
    async with Admin(broker.url) as admin:
        await admin.create_topic("short", partitions=1, config={"segment_bytes": 1024, "retention_bytes": 4096})
    async with Producer(broker.url, linger_ms=0) as producer:
        for i in range(120):  # one ~170-byte batch per send: about 20 KB, 20 segments
            await producer.send_and_wait("short", b"reading-%03d" % i + b"." * 100, partition=0)
    seg_dir = broker.data_dir / "short-0"
    deadline = time.monotonic() + 20
    start = 0
    async with Admin(broker.url) as admin:
        while time.monotonic() < deadline:
            start = (await admin.describe_topic("short"))["partitions"][0]["log_start_offset"]
            if start > 0:
                break
            await asyncio.sleep(0.2)
    assert start > 0, "retention never advanced the log start"
    remaining = sorted(p.name for p in seg_dir.glob("*.log"))
    total = sum(p.stat().st_size for p in seg_dir.glob("*.log"))
    # Whole segments only, oldest first: the first remaining segment is named by the new log start.
    assert remaining[0] == f"{start:020d}.log"
    assert total <= 4096 + 1024 + 200  # the retained bytes plus at most the active segment
    async with Consumer("short", bootstrap=broker.url, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition("short", 0)])
        got = []
        while len(got) < 120 - start:
            batch = await consumer.getmany(timeout_ms=2000)
            records = [r for rs in batch.values() for r in rs]
            assert records, "consumer stalled"
            got.extend(records)
    assert [r.offset for r in got] == list(range(start, 120))
    assert got[-1].value.startswith(b"reading-119")
