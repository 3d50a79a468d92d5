"""pikafka -> MQTT through a real pi-mqtt-bridge process, a real mosquitto and a real broker: records arrive at an
MQTT subscriber at least once and in order per partition, across a mosquitto restart and a kill -9 of the bridge."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

from clients import Admin, Producer
from tests.mosquitto import Mosquitto, Subscriber, bridge_factory_fixture, mosquitto_fixture, wait_until  # noqa: F401

TOPIC = "readings"
PARTITIONS = 3


def bridge_args(broker_url: str, mqtt_url: str, *extra: str) -> list[str]:
    return [
        "--bootstrap",
        broker_url,
        "--mqtt",
        mqtt_url,
        "--mqtt-client-id",
        "bridge-under-test",
        "--to-mqtt",
        f"{TOPIC}=pikafka/{{topic}}/{{partition}}/{{key}}",
        "--envelope",
        "json",
        *extra,
    ]


async def create_topic(url: str) -> None:
    async with Admin(url) as admin:
        await admin.create_topic(TOPIC, partitions=PARTITIONS)


async def produce(url: str, start: int, count: int, pause_every: int = 0) -> None:
    async with Producer(url, acks="all", linger_ms=2) as producer:
        futures = []
        for i in range(start, start + count):
            futures.append(await producer.send(TOPIC, f"value-{i}", key=f"dev-{i % 7}"))
            if pause_every and i % pause_every == 0:
                await asyncio.sleep(0.05)  # a stream, not one burst: the restarts land mid-way
        await asyncio.gather(*futures)


def offsets_by_partition(messages: list[tuple[str, bytes]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for topic, payload in messages:
        doc = json.loads(payload)
        assert topic == f"pikafka/{TOPIC}/{doc['partition']}/{doc['key']}"
        out[doc["partition"]].append(doc["offset"])
    return out


def check_at_least_once_in_order(messages: list[tuple[str, bytes]], total: int) -> int:
    """Every offset of every partition arrived; the first arrival of each offset is in offset order (a repeat after
    a restart is allowed: at least once). Returns how many duplicates arrived."""
    by_partition = offsets_by_partition(messages)
    seen_total = 0
    duplicates = 0
    for partition, offsets in by_partition.items():
        first_seen: list[int] = []
        seen: set[int] = set()
        for off in offsets:
            if off in seen:
                duplicates += 1
                continue
            seen.add(off)
            first_seen.append(off)
        assert first_seen == list(range(len(first_seen))), f"partition {partition} out of order or with a gap"
        seen_total += len(first_seen)
    assert seen_total == total
    return duplicates


async def wait_for_commits(url: str, at_least: int, timeout_s: float = 60) -> int:
    """Wait until the bridge's group committed offsets adding up to at least `at_least`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with Admin(url) as admin:
        while loop.time() < deadline:
            committed = sum((await admin.group_offsets("mqtt-bridge")).values())
            if committed >= at_least:
                return committed
            await asyncio.sleep(0.1)
    raise AssertionError(f"the bridge committed fewer than {at_least} offsets within {timeout_s} s")


def distinct_count(sub: Subscriber) -> int:
    return sum(len(set(v)) for v in offsets_by_partition(sub.snapshot()).values())


async def test_records_arrive_at_an_mqtt_subscriber(broker, mosquitto: Mosquitto, bridge_factory, tmp_path):
    await create_topic(broker.url)
    sub = Subscriber(mosquitto.port, f"pikafka/{TOPIC}/#")
    bridge = bridge_factory(bridge_args(broker.url, mosquitto.url), tmp_path / "bridge.log")
    bridge.start()
    try:
        await produce(broker.url, 0, 300)
        await asyncio.to_thread(wait_until, lambda: distinct_count(sub) >= 300, 60, "300 records over MQTT")
        check_at_least_once_in_order(sub.snapshot(), 300)
        # Payloads are the JSON envelope of the records as produced.
        doc = json.loads(sub.snapshot()[0][1])
        assert set(doc) == {"topic", "partition", "offset", "timestamp", "key", "value", "headers"}
        assert doc["value"].startswith("value-") and doc["key"].startswith("dev-")
        assert bridge.terminate() == 0, bridge.log()
    finally:
        sub.close()


async def test_mosquitto_restart_mid_stream_loses_nothing(broker, mosquitto: Mosquitto, bridge_factory, tmp_path):
    await create_topic(broker.url)
    total = 3000
    sub = Subscriber(mosquitto.port, f"pikafka/{TOPIC}/#")
    bridge = bridge_factory(bridge_args(broker.url, mosquitto.url), tmp_path / "bridge.log")
    bridge.start()
    try:
        producing = asyncio.create_task(produce(broker.url, 0, total, pause_every=50))
        await asyncio.to_thread(wait_until, lambda: distinct_count(sub) >= 200, 60, "the stream to start")
        mosquitto.stop()  # mid-stream: connections drop, unacknowledged publishes are outstanding
        await asyncio.sleep(2)  # not an assertion: the outage lasts a while so the bridge must queue and reconnect
        mosquitto.start()
        await producing
        await asyncio.to_thread(wait_until, lambda: distinct_count(sub) >= total, 120, f"all {total} records")
        check_at_least_once_in_order(sub.snapshot(), total)
        assert "reconnected to MQTT broker" in bridge.log() and "lost the MQTT broker" in bridge.log()
    finally:
        sub.close()


async def test_bridge_kill9_resumes_from_committed_offset(broker, mosquitto: Mosquitto, bridge_factory, tmp_path):
    await create_topic(broker.url)
    total = 3000
    sub = Subscriber(mosquitto.port, f"pikafka/{TOPIC}/#")
    args = bridge_args(broker.url, mosquitto.url)
    first = bridge_factory(args, tmp_path / "bridge1.log")
    first.start()
    try:
        producing = asyncio.create_task(produce(broker.url, 0, total, pause_every=50))
        await asyncio.to_thread(wait_until, lambda: distinct_count(sub) >= 500, 60, "the stream to start")
        await wait_for_commits(broker.url, 300)
        first.kill9()
        received_before = distinct_count(sub)
        await producing
        second = bridge_factory(args, tmp_path / "bridge2.log")
        second.start()
        await asyncio.to_thread(wait_until, lambda: distinct_count(sub) >= total, 120, f"all {total} records")
        duplicates = check_at_least_once_in_order(sub.snapshot(), total)
        # Resumed from the committed offsets, not from the beginning: the repeats are at most the records that
        # were in flight or acknowledged but not yet committed when the first bridge died.
        assert duplicates < received_before, (duplicates, received_before)
        assert second.terminate() == 0, second.log()
    finally:
        sub.close()
