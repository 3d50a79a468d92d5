"""`make demo`: a broker on loopback, a few simulated sensors producing readings, a consumer printing them.

It starts `pi-broker` as a real child process (the client package never imports the broker), creates the topic
`readings`, lets three simulated sensors publish SenML readings through the batching producer for a while (default
15 s; Ctrl-C stops earlier), prints every reading the consumer receives, then stops everything cleanly and prints
how many readings went in and came out.
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
from pathlib import Path

from clients.admin import Admin
from clients.consumer import Consumer
from clients.producer import Producer
from pikafka.errors import ErrorCode, PikafkaError

SENSORS = ("greenhouse-1", "greenhouse-2", "shed")
TOPIC = "readings"


def pick_port(preferred: int) -> int:
    """The CoAP default port when it is free on loopback (UDP and TCP), else any free one."""
    for candidate in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            try:
                u.bind(("127.0.0.1", candidate))
                t.bind(("127.0.0.1", u.getsockname()[1]))
            except OSError:
                continue
            return int(u.getsockname()[1])
    raise RuntimeError("no free port on loopback")


def start_broker(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "pi_broker.service", "--id", "1", "--bind", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--data-dir", str(data_dir)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the broker exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("demo: the broker did not come up within 20 s")


async def sensor(producer: Producer, name: str, stop: asyncio.Event, sent: list[int]) -> None:
    """One simulated sensor: a temperature that drifts around a daily curve, one reading every 0.5 s."""
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


async def run(url: str, seconds: float) -> tuple[int, int]:
    async with Admin(bootstrap=url) as admin:
        try:
            await admin.create_topic(TOPIC, partitions=3, replication_factor=1)
            print(f"demo: created topic '{TOPIC}' with 3 partitions")
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
    await asyncio.sleep(1.0)  # let the consumer find the log end before the sensors start ("latest")
    async with Producer(bootstrap=url, acks=1, linger_ms=20) as producer:
        sensors = [asyncio.create_task(sensor(producer, name, stop, sent)) for name in SENSORS]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        stop.set()
        await asyncio.gather(*sensors)
    await asyncio.sleep(1.0)  # the consumer's last long poll picks up the final readings
    consumer_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer_task
    return sent[0], received[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the sensors publish (default 15)")
    parser.add_argument("--data-dir", type=Path, default=Path("demo-data"), help="broker data directory")
    args = parser.parse_args()

    port = pick_port(5683)
    url = f"coap://127.0.0.1:{port}"
    broker = start_broker(port, args.data_dir)
    print(f"demo: broker 1 serving {url} (UDP and TCP), data in {args.data_dir}/")
    print(f"demo: try meanwhile:  coap-client-notls -m get {url}/ps/data/{TOPIC}")
    print(f"demo:                 .venv/bin/pikafka --bootstrap {url} topic describe {TOPIC}")
    try:
        sent, received = asyncio.run(run(url, args.seconds))
    finally:
        broker.send_signal(signal.SIGTERM)
        code = broker.wait(10)
    print(f"demo: {sent} readings produced, {received} consumed; broker stopped with exit code {code}")
    if received < sent:
        raise SystemExit("demo: the consumer missed readings")


if __name__ == "__main__":
    main()
