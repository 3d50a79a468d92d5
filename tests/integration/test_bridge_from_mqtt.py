"""MQTT -> pikafka through a real pi-mqtt-bridge process: whatever mosquitto acknowledged to an MQTT publisher ends
up in pikafka even when the bridge is killed -9 mid-stream; and with MQTT 5 the bridge never bridges back what it
published itself."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from clients import Admin, Consumer, Producer
from tests.mosquitto import Mosquitto, Subscriber, bridge_factory_fixture, mosquitto_fixture, wait_until  # noqa: F401

INBOUND = "inbound"


class Publisher:
    """Publishes QoS 1 and remembers what mosquitto acknowledged (PUBACK)."""

    def __init__(self, port: int) -> None:
        self.acked: list[bytes] = []
        self._by_mid: dict[int, bytes] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason, props):
        with self._lock:
            payload = self._by_mid.pop(mid, None)
            if payload is None:
                self._early.add(mid)
            else:
                self.acked.append(payload)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.acked.append(payload)
            else:
                self._by_mid[info.mid] = payload

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def consume_values(url: str, topic: str, expected: set[bytes], timeout_s: float = 90) -> list[bytes]:
    values: list[bytes] = []
    async with Consumer(topic, bootstrap=url) as consumer:
        deadline = time.monotonic() + timeout_s
        while not expected <= set(values) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values.extend(r.value or b"" for r in records)
    return values


async def test_bridge_kill9_loses_nothing_mosquitto_acknowledged(
    broker, mosquitto: Mosquitto, bridge_factory, tmp_path
):
    async with Admin(broker.url) as admin:
        await admin.create_topic(INBOUND, partitions=2)
    args = ["--bootstrap", broker.url, "--mqtt", mosquitto.url, "--mqtt-client-id", "bridge-in"]
    args += ["--from-mqtt", f"sensors/#={INBOUND}"]
    first = bridge_factory(args, tmp_path / "bridge1.log")
    first.start()
    # Only a subscribed session queues messages for the bridge while it is dead.
    await asyncio.to_thread(wait_until, lambda: "subscribed to 'sensors/#'" in first.log(), 30, "the subscription")
    publisher = Publisher(mosquitto.port)
    total = 2000
    try:
        for i in range(total):
            publisher.publish(f"sensors/room-{i % 5}", f"m-{i}".encode())
            if i == total // 3:
                first.kill9()  # mid-stream: messages produced but not PUBACKed, others not yet received
            if i % 100 == 0:
                await asyncio.sleep(0.02)
        await asyncio.to_thread(wait_until, lambda: len(publisher.acked) == total, 60, "mosquitto's PUBACKs")
        second = bridge_factory(args, tmp_path / "bridge2.log")
        second.start()
        acked = set(publisher.acked)
        values = await consume_values(broker.url, INBOUND, acked)
        missing = acked - set(values)
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
        # Per MQTT topic (= record key, one partition) the order of first arrival is the publish order.
        per_room: dict[int, list[int]] = {}
        seen: set[bytes] = set()
        for v in values:
            if v not in seen:
                seen.add(v)
                i = int(v.split(b"-")[1])
                per_room.setdefault(i % 5, []).append(i)
        for room, seq in per_room.items():
            assert seq == sorted(seq), room
        assert second.terminate() == 0, second.log()
    finally:
        publisher.close()


async def test_mqtt5_bridge_never_bridges_its_own_messages_back(broker, mosquitto: Mosquitto, bridge_factory, tmp_path):
    async with Admin(broker.url) as admin:
        await admin.create_topic("readings", partitions=1)
        await admin.create_topic(INBOUND, partitions=1)
    # Overlapping routes on purpose: what the bridge publishes to shared/... matches its own subscription shared/#.
    args = ["--bootstrap", broker.url, "--mqtt", mosquitto.url, "--mqtt-protocol", "5", "--mqtt-client-id", "b5"]
    args += ["--to-mqtt", "readings=shared/{key}", "--from-mqtt", f"shared/#={INBOUND}"]
    bridge = bridge_factory(args, tmp_path / "bridge.log")
    bridge.start()
    watcher = Subscriber(mosquitto.port, "shared/#", client_id="watcher")
    publisher = Publisher(mosquitto.port)
    try:
        await asyncio.to_thread(wait_until, lambda: "subscribed to 'shared/#'" in bridge.log(), 30, "the bridge")
        async with Producer(broker.url, acks="all") as producer:
            for i in range(20):
                await producer.send_and_wait("readings", f"from-pikafka-{i}", key="dev")
        await asyncio.to_thread(wait_until, lambda: len(watcher.snapshot()) >= 20, 60, "the bridge's publishes")
        publisher.publish("shared/outside", b"from-outside")
        values = await consume_values(broker.url, INBOUND, {b"from-outside"})
        # Only the outside message was bridged in; none of the bridge's own 20 came back.
        assert values == [b"from-outside"], values
    finally:
        publisher.close()
        watcher.close()


def test_overlapping_routes_are_refused_with_mqtt311(tmp_path: Path):
    from clients.mqtt_bridge.config import ConfigError, load_config

    try:
        load_config(["--to-mqtt", "readings=shared/{key}", "--from-mqtt", "shared/#=inbound"])
    except ConfigError as exc:
        assert "loop" in str(exc)
    else:
        raise AssertionError("overlapping routes accepted with MQTT 3.1.1")
