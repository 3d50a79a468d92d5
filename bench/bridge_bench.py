"""MQTT bridge benchmark: prints figures, asserts nothing. Needs mosquitto (apt-get install mosquitto).

    .venv/bin/python bench/bridge_bench.py           # 20000 records, 30 latency samples (about a minute)
    .venv/bin/python bench/bridge_bench.py --quick   # 5000 records, 10 latency samples

(1) throughput pikafka -> mosquitto through a pi-mqtt-bridge process (records already in a 3-partition topic,
    100-byte values, QoS 1), as a ratio to paho publishing the same number of 100-byte QoS 1 messages straight to
    the same mosquitto, same run. Both are timed at one QoS 1 subscriber, from its first message to its last, so
    the bridge's start-up and group join are not counted and both include mosquitto's delivery.
(2) end-to-end latency sensor -> MQTT subscriber: a pi-sensor process reading once a second, acks=all to a broker,
    the bridge, mosquitto, a subscriber; latency = arrival time - the SenML base time of the reading (same clock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clients import Admin, Producer  # noqa: E402
from tests.conftest import BrokerProcess  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402
from tests.ports import free_port  # noqa: E402

VALUE = b"x" * 100


class Counter:
    """A QoS 1 subscriber recording arrival times (and payloads, for the latency run)."""

    def __init__(self, port: int, topic_filter: str, client_id: str) -> None:
        self.times: list[float] = []
        self.payloads: list[bytes] = []
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda c, u, m, r, p: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._ready.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.times.append(time.time())
        self.payloads.append(bytes(message.payload))

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.times) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(self.times) < n:
            raise RuntimeError(f"only {len(self.times)} of {n} messages arrived")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def direct_publisher(port: int, n: int) -> None:
    """The baseline publisher, run as its own process like the bridge (so neither shares the subscriber's GIL)."""
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-direct-pub")
    publisher.max_inflight_messages_set(100)  # the bridge's setting
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    infos = [publisher.publish(f"direct/{i % 3}", VALUE, qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(120)
    publisher.disconnect()
    publisher.loop_stop()


def direct_rate(port: int, n: int) -> float:
    counter = Counter(port, "direct/#", "bench-direct-sub")
    proc = subprocess.Popen([sys.executable, __file__, "--direct-publisher", str(port), str(n)], cwd=REPO)
    counter.wait_for(n, 300)
    proc.wait(60)
    counter.close()
    return (n - 1) / (counter.times[-1] - counter.times[0])


async def bridge_rate(broker: BrokerProcess, mosq: Mosquitto, n: int, work: Path) -> float:
    async with Admin(broker.url) as admin:
        await admin.create_topic("bench", partitions=3)
    async with Producer(broker.url, acks=1, linger_ms=5) as producer:
        for i in range(n):
            await producer.send("bench", VALUE, key=b"k%d" % (i % 64))
        await producer.flush()
    counter = Counter(mosq.port, "bridged/#", "bench-bridge-sub")
    bridge = spawn(
        ["clients.mqtt_bridge.service", "--bootstrap", broker.url, "--mqtt", mosq.url, "--mqtt-client-id",
         "bench-bridge", "--group-id", "bench", "--to-mqtt", "bench=bridged/{partition}"],
        work / "bridge-throughput.log",
    )  # fmt: skip
    try:
        await asyncio.to_thread(counter.wait_for, n, 600)
    finally:
        stop(bridge)
        counter.close()
    return (n - 1) / (counter.times[-1] - counter.times[0])


async def latency(broker: BrokerProcess, mosq: Mosquitto, samples: int, work: Path) -> list[float]:
    async with Admin(broker.url) as admin:
        await admin.create_topic("lat", partitions=1)
    counter = Counter(mosq.port, "lat/#", "bench-latency-sub")
    config = work / "sensor.toml"
    config.write_text(
        f'bootstrap = "{broker.url}"\ntopic = "lat"\ndevice = "bench"\nstate_dir = "{work / "sensor"}"\n'
        '[[source]]\ntype = "load"\ninterval_s = 1\n'
    )
    bridge = spawn(
        ["clients.mqtt_bridge.service", "--bootstrap", broker.url, "--mqtt", mosq.url, "--mqtt-client-id",
         "bench-lat", "--group-id", "bench-lat", "--to-mqtt", "lat=lat/{key}"],
        work / "bridge-latency.log",
    )  # fmt: skip
    sensor = spawn(["clients.sensor.service", "--config", str(config)], work / "sensor.log")
    try:
        # Skip the first readings: they wait for the bridge to join its group.
        await asyncio.to_thread(counter.wait_for, samples + 3, samples + 120)
    finally:
        stop(sensor)
        stop(bridge)
        counter.close()
    out = []
    for arrived, payload in list(zip(counter.times, counter.payloads, strict=True))[3 : samples + 3]:
        out.append((arrived - json.loads(payload)[0]["bt"]) * 1000)
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--direct-publisher", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct_publisher:
        direct_publisher(*args.direct_publisher)
        return
    n = 5000 if args.quick else 20000
    samples = 10 if args.quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mosq = Mosquitto(work / "mosquitto", free_port())
        mosq.start()
        broker = BrokerProcess(data_dir=work / "broker", port=free_port(), log_path=work / "broker.log")
        broker.start()
        try:
            direct = await asyncio.to_thread(direct_rate, mosq.port, n)
            bridged = await bridge_rate(broker, mosq, n, work)
            print(f"throughput, {n} x 100 B QoS 1 into mosquitto (first to last arrival at one subscriber):")
            print(f"  paho straight to mosquitto : {direct:9.0f} msg/s")
            print(f"  pikafka -> bridge -> mqtt  : {bridged:9.0f} msg/s")
            print(f"  ratio bridge / direct      : {bridged / direct:9.2f}   (target >= 0.7)")
            lat = await latency(broker, mosq, samples, work)
            print(
                f"latency sensor -> pikafka (acks=all) -> bridge -> mosquitto -> subscriber, 1/s, {len(lat)} samples:"
            )
            p50, p99 = statistics.median(lat), percentile(lat, 99)
            print(f"  p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   max {max(lat):7.1f} ms")
        finally:
            broker.terminate()
            mosq.stop()


if __name__ == "__main__":
    asyncio.run(main())
