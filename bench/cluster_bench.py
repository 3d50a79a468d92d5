"""Cluster benchmark: prints figures, asserts nothing. Default timeouts (heartbeat 500 ms, session 2 s).

    .venv/bin/python bench/cluster_bench.py           # 5 failovers and the ingest ratio, a few minutes
    .venv/bin/python bench/cluster_bench.py --quick   # 3 failovers, smaller ingest

(1) failover time: kill -9 of the partition leader while a producer sends acks=all records one after another, to the
    first acknowledged acks=all produce after the kill (necessarily by the new leader); median of the runs.
(2) acks=all ingest on 3 brokers with replication factor 3, as a ratio to acks=1 ingest on a single standalone
    broker, same producer settings, same run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests/ports.py and tests/processes.py

from clients import Admin, Producer
from tests.ports import free_port
from tests.processes import wait_for_port

REPO = Path(__file__).resolve().parent.parent

VALUE = b"x" * 100


def spawn(module: str, port: int, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--bind", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(proc, port, log, module, 20.0)
    return proc


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.zk_port = free_port()
        self.ports = [free_port() for _ in range(3)]
        self.zk = spawn("pi_zookeeper.service", self.zk_port, ["--data-dir", str(root / "zk")], root / "zk.log")
        self.brokers: dict[int, subprocess.Popen[bytes]] = {}
        for i, port in enumerate(self.ports, start=1):
            args = [
                "--id",
                str(i),
                "--data-dir",
                str(root / f"b{i}"),
                "--zookeeper",
                f"coap://127.0.0.1:{self.zk_port}",
            ]
            self.brokers[i] = spawn("pi_broker.service", port, args, root / f"b{i}.log")
        self.bootstrap = ",".join(f"coap://127.0.0.1:{p}" for p in self.ports)

    async def wait_alive(self, count: int) -> None:
        async with Admin(f"coap://127.0.0.1:{self.zk_port}") as admin:
            while True:
                brokers = (await admin.metadata())["brokers"]
                if sum(1 for b in brokers if b.get("alive")) >= count:
                    return
                await asyncio.sleep(0.1)

    async def leader_of(self, topic: str) -> int:
        async with Admin(f"coap://127.0.0.1:{self.zk_port}") as admin:
            meta = await admin.metadata()
        (t,) = [t for t in meta["topics"] if t["name"] == topic]
        return int(t["partitions"][0]["leader"])

    def close(self) -> None:
        stop([*self.brokers.values(), self.zk])


async def one_failover(root: Path) -> float:
    cluster = Cluster(root)
    try:
        await cluster.wait_alive(3)
        async with Admin(cluster.bootstrap) as admin:
            await admin.create_topic("f", partitions=1, replication_factor=3)
        async with Producer(
            cluster.bootstrap, acks="all", linger_ms=0, retry_backoff_ms=20, retry_backoff_max_ms=100
        ) as p:
            for _ in range(20):  # warm: connections open, ISR complete
                await p.send_and_wait("f", VALUE, partition=0)
            leader = await cluster.leader_of("f")
            # A real crash lands anywhere in the 0.5 s heartbeat cycle; without this the kill would fall at the same
            # phase every run (start-up and warm-up take a steady time) and bias every run the same way.
            await asyncio.sleep(random.uniform(0, 0.5))
            cluster.brokers[leader].send_signal(signal.SIGKILL)
            killed_at = time.perf_counter()
            await p.send_and_wait("f", VALUE, partition=0)
            return time.perf_counter() - killed_at
    finally:
        cluster.close()


async def ingest(bootstrap: str, n: int, acks: str | int) -> float:
    async with Producer(bootstrap, acks=acks, linger_ms=5) as p:
        await p.send_and_wait("ingest", VALUE, partition=0)
        t0 = time.perf_counter()
        futures = [await p.send("ingest", VALUE, partition=i % 3) for i in range(n)]
        await p.flush()
        await asyncio.gather(*futures)
        return n / (time.perf_counter() - t0)


async def main(quick: bool) -> None:
    runs = 3 if quick else 5
    n = 50_000 if quick else 150_000
    print(f"(1) failover: kill -9 of the leader -> first acks=all ack on the new leader, {runs} runs")
    times = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="pikafka-failover-") as tmp:
            seconds = await one_failover(Path(tmp))
        times.append(seconds)
        print(f"  run {i + 1}: {seconds:.2f} s", flush=True)
    print(f"  median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f})")

    print(f"(2) ingest of {n:,} x 100-byte records in 3 partitions")
    with tempfile.TemporaryDirectory(prefix="pikafka-ingest-") as tmp:
        root = Path(tmp)
        cluster = Cluster(root)
        try:
            await cluster.wait_alive(3)
            async with Admin(cluster.bootstrap) as admin:
                await admin.create_topic("ingest", partitions=3, replication_factor=3)
            replicated = await ingest(cluster.bootstrap, n, "all")
        finally:
            cluster.close()
        port = free_port()
        single = spawn(
            "pi_broker.service", port, ["--id", "1", "--data-dir", str(root / "single")], root / "single.log"
        )
        try:
            async with Admin(f"coap://127.0.0.1:{port}") as admin:
                await admin.create_topic("ingest", partitions=3, replication_factor=1)
            alone = await ingest(f"coap://127.0.0.1:{port}", n, 1)
        finally:
            stop([single])
    print(f"  3 brokers, R=3, acks=all: {replicated:,.0f} records/s")
    print(f"  1 broker, acks=1:          {alone:,.0f} records/s")
    print(f"  ratio {replicated / alone:.2f}")
    print(f"SUMMARY failover_median={statistics.median(times):.2f}s ingest_ratio={replicated / alone:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
