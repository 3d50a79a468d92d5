"""Replication transport benchmark: follower fetches over CoAP over TCP against block-wise CoAP over UDP.

    .venv/bin/python bench/replication_transport_bench.py [--megabytes 16]

Starts a zookeeper and two brokers on loopback, creates a topic with replication factor 2, fills it with 64 KiB
batches, then reads the whole log back the way a follower does (`/fetch` with `replica_id` and `leader_epoch`,
replica_fetch_max_bytes = 1 MiB per request) once over each transport, and prints MB/s. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests/ports.py and tests/processes.py

import aiocoap
import cbor2

from pikafka.protocol import CT_CBOR
from pikafka.records import Record, encode_batch, iter_batches
from tests.ports import free_port
from tests.processes import wait_for_port

REPO = Path(__file__).resolve().parent.parent

FETCH_MAX_BYTES = 1024 * 1024
BATCH_VALUE = b"r" * (64 * 1024 - 200)


async def request(ctx: aiocoap.Context, uri: str, code: aiocoap.Code, body: object) -> object:
    msg = aiocoap.Message(code=code, uri=uri, payload=cbor2.dumps(body), content_format=CT_CBOR)
    response = await ctx.request(msg).response
    if not response.code.is_successful():
        raise RuntimeError(f"{uri}: {response.code} {response.payload[:200]!r}")
    return cbor2.loads(response.payload) if response.payload else None


async def replicate_once(ctx: aiocoap.Context, base: str, epoch: int, end: int) -> tuple[int, float]:
    """Fetch [0, end) as follower 2 would; returns (bytes, seconds)."""
    offset = 0
    total = 0
    started = time.perf_counter()
    while offset < end:
        body = {
            "replica_id": 2,
            "max_bytes": FETCH_MAX_BYTES,
            "wait_ms": 0,
            "partitions": [{"topic": "bench", "partition": 0, "offset": offset, "leader_epoch": epoch}],
        }
        answer = await request(ctx, f"{base}/fetch", aiocoap.Code.FETCH, body)
        assert isinstance(answer, dict)
        records = answer["partitions"][0]["records"]
        total += len(records)
        for header, _ in iter_batches(records):
            offset = max(offset, header.next_offset)
    return total, time.perf_counter() - started


async def run(megabytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        zk_port = free_port()
        ports = {1: free_port(), 2: free_port()}
        try:
            zk_args = [
                "--bind",
                "127.0.0.1",
                "--port",
                str(zk_port),
                "--data-dir",
                f"{tmp}/zk",
                "--log-level",
                "WARNING",
            ]
            zk = subprocess.Popen([sys.executable, "-m", "pi_zookeeper.service", *zk_args], cwd=REPO)
            procs.append(zk)
            wait_for_port(zk, zk_port, None, "zookeeper", 20.0)
            for broker_id, port in ports.items():
                args = ["--id", str(broker_id), "--bind", "127.0.0.1", "--port", str(port)]
                args += ["--data-dir", f"{tmp}/b{broker_id}", "--log-level", "WARNING"]
                args += ["--zookeeper", f"coap://127.0.0.1:{zk_port}"]
                proc = subprocess.Popen([sys.executable, "-m", "pi_broker.service", *args], cwd=REPO)
                procs.append(proc)
                wait_for_port(proc, port, None, f"broker {broker_id}", 20.0)
            ctx = await aiocoap.Context.create_client_context()
            zk_base = f"coap+tcp://127.0.0.1:{zk_port}"
            await asyncio.sleep(1.0)  # both brokers registered
            await request(ctx, f"{zk_base}/topics", aiocoap.Code.POST, {"name": "bench", "replication_factor": 2})
            meta = await request(ctx, f"{zk_base}/metadata", aiocoap.Code.GET, {})
            assert isinstance(meta, dict)
            part = meta["topics"][0]["partitions"][0]
            leader, epoch = part["leader"], part["leader_epoch"]
            await asyncio.sleep(1.0)  # the leader applied the snapshot
            tcp_base = f"coap+tcp://127.0.0.1:{ports[leader]}"
            batch = encode_batch([Record(value=BATCH_VALUE)])
            count = megabytes * 1024 * 1024 // len(batch)
            for _ in range(count):
                body = {"acks": 1, "batches": [{"topic": "bench", "partition": 0, "records": batch}]}
                await request(ctx, f"{tcp_base}/produce", aiocoap.Code.POST, body)
            for name, base in (
                ("CoAP over TCP", tcp_base),
                ("CoAP over UDP, block-wise", tcp_base.replace("+tcp", "")),
            ):
                size, seconds = await replicate_once(ctx, base, epoch, count)
                print(f"{name:28s} {size / seconds / 1e6:8.1f} MB/s  ({size / 1e6:.1f} MB in {seconds:.2f} s)")
            await ctx.shutdown()
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--megabytes", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(run(args.megabytes))


if __name__ == "__main__":
    main()
