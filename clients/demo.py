"""`make demo`: a zookeeper and three brokers on loopback, simulated sensors producing readings, a consumer.

It starts `pi-zookeeper` and three `pi-broker` processes as real children (the client package never imports the
services), creates the topic `readings` with 3 partitions replicated 3 times, lets three simulated sensors publish
SenML readings through the batching producer with acks=all for a while (default 15 s; Ctrl-C stops earlier), prints
every reading the consumer receives and the cluster table, then stops everything cleanly and prints how many readings
went in and came out. `--brokers 1` runs one standalone broker instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clients.admin import Admin
from clients.cluster_view import fetch_cluster_view, format_cluster_table
from clients.consumer import Consumer
from clients.producer import Producer
from pikafka.background_task import cancel_and_wait
from pikafka.errors import ErrorCode, PikafkaError

SENSORS = ("greenhouse-1", "greenhouse-2", "shed")
TOPIC = "readings"


def pick_ports(preferred: list[int]) -> list[int]:
    """The preferred ports where free on loopback (UDP and TCP), else free ones the kernel picks."""
    ports: list[int] = []
    for want in preferred:
        for candidate in (want, 0):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
                # As the services do: a TCP port left in TIME_WAIT by the previous demo is still usable.
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    u.bind(("127.0.0.1", candidate))
                    t.bind(("127.0.0.1", u.getsockname()[1]))
                except OSError:
                    continue
                port = int(u.getsockname()[1])
                if port not in ports:
                    ports.append(port)
                    break
        else:
            raise SystemExit("demo: no free port on loopback")
    return ports


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    port: int


def start(name: str, module: str, port: int, args: list[str], log_path: Path) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:  # the services' own logs go to files, so the demo's output stays readable
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--bind", "127.0.0.1", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {name} exited with code {proc.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Child(name, proc, port)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"demo: {name} did not come up within 20 s")


def stop_all(children: list[Child]) -> None:
    # Brokers first, then the zookeeper: a broker stopping last would only log that its zookeeper is gone.
    for child in reversed(children):
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in reversed(children):
        try:
            code = child.proc.wait(10)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            code = child.proc.wait()
        print(f"demo: {child.name} stopped with exit code {code}")


async def wait_for_brokers(url: str, count: int) -> None:
    async with Admin(url) as admin:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(PikafkaError):
                brokers = (await admin.metadata())["brokers"]
                if sum(1 for b in brokers if b.get("alive", True)) >= count:
                    return
            await asyncio.sleep(0.2)
    raise SystemExit(f"demo: {count} brokers did not register within 30 s")


async def sensor(producer: Producer, name: str, stop: asyncio.Event, sent: list[int]) -> None:
    """One simulated sensor: a temperature that drifts around a slow curve, one reading every 0.5 s."""
    base = 18 + 4 * random.random()
    while not stop.is_set():
        t = time.time()
        celsius = base + 3 * math.sin(t / 60) + random.gauss(0, 0.2)
        senml = [{"bn": f"urn:dev:{name}:", "n": "temperature", "u": "Cel", "v": round(celsius, 2), "t": t}]
        await producer.send(TOPIC, json.dumps(senml).encode(), key=name.encode())
        sent[0] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def consume(url: str, stop: asyncio.Event, received: list[int]) -> None:
    async with Consumer(TOPIC, bootstrap=url, auto_offset_reset="latest") as consumer:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=300)
            for tp, records in batches.items():
                for rec in records:
                    reading = json.loads(rec.value or b"[]")[0]
                    print(
                        f"  consumer  p{tp.partition} @{rec.offset:<6} {reading['bn']}{reading['n']} = "
                        f"{reading['v']} {reading['u']}",
                        flush=True,
                    )
                    received[0] += 1


async def run(url: str, replication: int, seconds: float) -> tuple[int, int]:
    async with Admin(bootstrap=url) as admin:
        try:
            await admin.create_topic(TOPIC, partitions=3, replication_factor=replication)
            print(f"demo: created topic '{TOPIC}': 3 partitions, replication factor {replication}")
        except PikafkaError as exc:
            if exc.code is not ErrorCode.TOPIC_ALREADY_EXISTS:
                raise
            print(f"demo: topic '{TOPIC}' already exists; continuing its log")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    sent, received = [0], [0]
    consumer_task = asyncio.create_task(consume(url, stop, received))
    await asyncio.sleep(1.5)  # let the consumer find the log end before the sensors start ("latest")
    async with Producer(bootstrap=url, acks=-1, linger_ms=20) as producer:
        sensors = [asyncio.create_task(sensor(producer, name, stop, sent)) for name in SENSORS]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        stop.set()
        await asyncio.gather(*sensors)
    await asyncio.sleep(1.0)  # the consumer's last long poll picks up the final readings
    await cancel_and_wait(consumer_task)
    print()
    print(format_cluster_table(await fetch_cluster_view(url)))
    return sent[0], received[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the sensors publish (default 15)")
    parser.add_argument("--brokers", type=int, choices=(1, 3), default=3, help="3 (a cluster, default) or 1")
    parser.add_argument("--data-dir", type=Path, default=Path("demo-data"), help="where the services keep data")
    args = parser.parse_args()

    children: list[Child] = []
    zk_url: str | None = None
    try:
        if args.brokers == 1:
            (port,) = pick_ports([5683])
            children.append(
                start(
                    "broker 1",
                    "pi_broker.service",
                    port,
                    ["--id", "1", "--data-dir", str(args.data_dir / "b1")],
                    args.data_dir / "broker-1.log",
                )
            )
        else:
            zk_port, *ports = pick_ports([5680, 5683, 5684, 5685])
            zk_url = f"coap://127.0.0.1:{zk_port}"
            children.append(
                start(
                    "zookeeper",
                    "pi_zookeeper.service",
                    zk_port,
                    ["--data-dir", str(args.data_dir / "zk")],
                    args.data_dir / "zookeeper.log",
                )
            )
            print(f"demo: zookeeper serving {zk_url}")
            for broker_id, port in enumerate(ports, start=1):
                data = str(args.data_dir / f"b{broker_id}")
                children.append(
                    start(
                        f"broker {broker_id}",
                        "pi_broker.service",
                        port,
                        ["--id", str(broker_id), "--data-dir", data, "--zookeeper", zk_url],
                        args.data_dir / f"broker-{broker_id}.log",
                    )
                )
        for child in children:
            print(f"demo: {child.name} serving coap://127.0.0.1:{child.port} (UDP and TCP)")
        print(f"demo: service logs in {args.data_dir}/*.log")
        url = f"coap://127.0.0.1:{children[-1].port}"
        print(f"demo: try meanwhile:  coap-client-notls -m get {url}/ps/data/{TOPIC}")
        print(f"demo:                 .venv/bin/pikafka cluster --bootstrap {url}")
        if zk_url is not None:
            asyncio.run(wait_for_brokers(zk_url, 3))
        sent, received = asyncio.run(run(url, min(3, args.brokers), args.seconds))
    finally:
        stop_all(children)
    print(f"demo: {sent} readings produced with acks=all, {received} consumed")
    if received < sent:
        raise SystemExit("demo: the consumer missed readings")


if __name__ == "__main__":
    main()
