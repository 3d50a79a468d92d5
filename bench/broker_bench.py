"""Single-broker benchmark: prints figures, asserts nothing.

    .venv/bin/python bench/broker_bench.py            # all four parts, about two minutes
    .venv/bin/python bench/broker_bench.py --quick    # smaller counts, for a smoke run
    .venv/bin/python bench/broker_bench.py --pause-log FILE       # also log the brokers' long pauses (pause_log.py)
    .venv/bin/python bench/broker_bench.py --loop-fsync-max-ms 0  # brokers that fsync every round on threads

(a) batching producer, acks=1, 100-byte records: records/s
(b) one record per request, 16 in flight: broker rate as a ratio to a bare aiocoap resource that does nothing,
    same client, same transport (UDP and TCP both reported; medians of alternating rounds)
(c) ack latency p50/p99 at 1,000 records/s offered, one record per request (open loop)
(d) broker RSS after 1M records in 10 partitions, beside a bare aiocoap server's RSS after the same request load
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests/ports.py and tests/processes.py

import aiocoap
import cbor2
from bare_coap_server import burn_cpu
from pause_log import mark
from proc_readings import rss_mb

from clients import Admin, Producer
from pikafka.protocol import CT_CBOR
from pikafka.records import Record, encode_batch
from tests.ports import free_port
from tests.processes import wait_for_port

REPO = Path(__file__).resolve().parent.parent

VALUE = b"x" * 100
B_ROUNDS = 3  # (b) is noisy from run to run on a shared 2-core machine: report the median of alternating rounds


@dataclass(frozen=True)
class BrokerLaunch:
    """How the benchmark starts its brokers: as shipped by default."""

    pause_log: TextIO | None = None  # run each under bench/pause_log.py, its stderr and the phase marks here
    loop_fsync_max_ms: int | None = None  # the broker setting; None leaves its default

    def note(self, text: str) -> None:
        """Mark a phase in the pause log, so that the pauses line up with what was being measured."""
        if self.pause_log is not None:
            mark(self.pause_log, text)


def start_broker(data_dir: str, port: int, launch: BrokerLaunch = BrokerLaunch()) -> subprocess.Popen[bytes]:
    program = [str(REPO / "bench" / "pause_log.py")] if launch.pause_log is not None else ["-m", "pi_broker.service"]
    cmd = [sys.executable, *program, "--id", "1", "--bind", "127.0.0.1", "--port", str(port), "--data-dir", data_dir]
    if launch.loop_fsync_max_ms is not None:
        cmd += ["--loop-fsync-max-ms", str(launch.loop_fsync_max_ms)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=launch.pause_log)
    launch.note(f"broker pid {proc.pid}: port {port}, data dir {data_dir}")
    wait_for_port(proc, port, None, "broker", 20.0)
    return proc


def start_bare(port: int, cpu_tax_us: int = 0, answer: str = "empty") -> subprocess.Popen[bytes]:
    script = str(REPO / "bench" / "bare_coap_server.py")
    args = ["--port", str(port), "--cpu-tax-us", str(cpu_tax_us), "--answer", answer]
    proc = subprocess.Popen([sys.executable, script, *args])
    wait_for_port(proc, port, None, "bare aiocoap server", 20.0)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def batching_rate(url: str, topic: str, n: int, partitions: int) -> float:
    async with Producer(bootstrap=url, acks=1, linger_ms=5, max_batch_bytes=256 * 1024) as p:
        # warm-up: metadata and connections
        await p.send_and_wait(topic, VALUE, partition=0)
        t0 = time.perf_counter()
        futures = [await p.send(topic, VALUE, partition=i % partitions) for i in range(n)]
        await p.flush()  # returns once every record is acknowledged or has failed
        # Each record's outcome checked as it stands (result() raises a failure). Not asyncio.gather: it would add a
        # callback to each of the n futures and run them all through the loop, which doubled the client's CPU per
        # record on stop 19's machine (26 against 12 µs) and measures asyncio, not the producer.
        if not all(f.result().offset >= 0 for f in futures):
            raise RuntimeError("an acks=1 record came back without an offset")
        return n / (time.perf_counter() - t0)


def one_record_request(uri: str, topic: str, no: int) -> aiocoap.Message:
    body = cbor2.dumps(
        {"acks": 1, "batches": [{"topic": topic, "partition": 0, "records": encode_batch([Record(VALUE)])}]}
    )
    return aiocoap.Message(code=aiocoap.POST, uri=uri, payload=body, content_format=CT_CBOR)


async def rate_in_flight(
    ctx: aiocoap.Context, uri: str, topic: str, n: int, in_flight: int = 16, cpu_tax_s: float = 0.0
) -> float:
    """Requests/s of one-record produces, `in_flight` at once; `cpu_tax_s` of busy CPU after each answer emulates a
    slower client CPU."""
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with sem:
            resp = await ctx.request(one_record_request(uri, topic, i)).response
            burn_cpu(cpu_tax_s)
            if not resp.code.is_successful():
                raise RuntimeError(f"{resp.code}: {resp.payload!r}")

    await one(-1)
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t0)


async def open_loop_latency(ctx: aiocoap.Context, uri: str, topic: str, rate: int, seconds: float) -> list[float]:
    latencies: list[float] = []

    async def one(i: int) -> None:
        t = time.perf_counter()
        resp = await ctx.request(one_record_request(uri, topic, i)).response
        if resp.code.is_successful():
            latencies.append(time.perf_counter() - t)

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        # open loop: the send schedule does not wait for answers, so slow answers show as latency, not lower load
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies


async def rss_after_records(n: int, launch: BrokerLaunch) -> float:
    with tempfile.TemporaryDirectory(prefix="pikafka-bench-rss-") as tmp:
        port = free_port()
        broker = start_broker(tmp, port, launch)
        launch.note("(d) begins, on a fresh broker")
        try:
            url = f"coap://127.0.0.1:{port}"
            admin = Admin(bootstrap=url)
            await admin.create_topic("rss", partitions=10, replication_factor=1)
            await admin.close()
            await batching_rate(url, "rss", n, 10)
            return rss_mb(broker.pid)
        finally:
            stop(broker)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


async def timed(label: str, fn: Callable[[], Awaitable[float]]) -> float:
    value = await fn()
    print(f"  {label}: {value:,.0f}", flush=True)
    return value


async def main(quick: bool, launch: BrokerLaunch) -> None:
    n_batch = 100_000 if quick else 300_000
    n_single = 1_000 if quick else 4_000
    n_rss = 200_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="pikafka-bench-") as tmp, contextlib.ExitStack() as started:
        port, bare_port, lazy_port = free_port(), free_port(), free_port()
        broker = start_broker(os.path.join(tmp, "broker"), port, launch)
        started.callback(stop, broker)
        bare = start_bare(bare_port)
        started.callback(stop, bare)
        # The flush_interval_ms topic gets a broker of its own, so that the broker compared with the bare server
        # answers exactly as many requests in (b) as the bare server does. Over UDP aiocoap keeps every exchange for
        # its deduplication lifetime (about 4 minutes) and each full garbage collection walks them all: serving the
        # lazy rounds too, the broker carried twice the bare server's exchanges, and its full collections took 1.6 s
        # in all against the bare server's 0.7 s (docs/benchmarks-history.md, stop 18).
        lazy_broker = start_broker(os.path.join(tmp, "lazy"), lazy_port, launch)
        started.callback(stop, lazy_broker)
        url = f"coap://127.0.0.1:{port}"
        admin = Admin(bootstrap=url)
        await admin.create_topic("bench", partitions=10, replication_factor=1)
        await admin.create_topic("single", partitions=1, replication_factor=1)
        await admin.close()
        admin = Admin(bootstrap=f"coap://127.0.0.1:{lazy_port}")
        # Acknowledged after the write, fsynced within 1 s: isolates the cost of waiting for the fsync.
        await admin.create_topic("lazy", partitions=1, replication_factor=1, config={"flush_interval_ms": 1000})
        await admin.close()

        print(f"(a) batching producer, acks=1, {n_batch:,} x 100-byte records, 10 partitions")
        a = await timed("records/s", lambda: batching_rate(url, "bench", n_batch, 10))

        print(f"(b) one record per request, 16 in flight, {n_single:,} requests, {B_ROUNDS} alternating rounds")
        ctx = await aiocoap.Context.create_client_context()
        ratios = {}
        # TCP first: aiocoap keeps every UDP exchange for its deduplication lifetime (about 4 minutes), so a UDP
        # phase leaves tens of megabytes of objects that every later garbage collection then walks.
        for scheme in ("coap+tcp", "coap"):
            measured: dict[str, list[float]] = {"broker": [], "bare": [], "lazy": []}
            for _ in range(B_ROUNDS):
                # Alternating the three targets spreads the machine's drift over all of them.
                for name, target_port, topic in (
                    ("broker", port, "single"),
                    ("bare", bare_port, "single"),
                    ("lazy", lazy_port, "lazy"),
                ):
                    uri = f"{scheme}://127.0.0.1:{target_port}/produce"
                    launch.note(f"(b) {scheme} {name} begins")
                    measured[name].append(await rate_in_flight(ctx, uri, topic, n_single))
            broker_rates, bare_rates, lazy_rates = measured["broker"], measured["bare"], measured["lazy"]
            b_rate, bare_rate = statistics.median(broker_rates), statistics.median(bare_rates)
            lazy_rate = statistics.median(lazy_rates)
            ratios[scheme] = b_rate / bare_rate
            print(
                f"  {scheme:8s} same to a flush_interval_ms=1000 topic: {lazy_rate:,.0f} req/s, "
                f"ratio {lazy_rate / bare_rate:.2f}"
            )
            each = ", ".join(f"{b / a:.2f}" for b, a in zip(broker_rates, bare_rates, strict=True))
            print(
                f"  {scheme:8s} broker {b_rate:,.0f} req/s, bare aiocoap {bare_rate:,.0f} req/s (medians), "
                f"ratio {ratios[scheme]:.2f} (each round: {each})"
            )

        print("(c) ack latency at 1,000 records/s offered, one record per request, 10 s")
        # TCP first: 1,000/s over UDP overloads aiocoap (server and client alike), and the backlog it leaves
        # would show up in whatever is measured next.
        for scheme in ("coap+tcp", "coap"):
            launch.note(f"(c) {scheme} broker begins")
            lat = await open_loop_latency(
                ctx, f"{scheme}://127.0.0.1:{port}/produce", "single", 1000, 5 if quick else 10
            )
            launch.note(f"(c) {scheme} bare begins")
            bare_lat = await open_loop_latency(
                ctx, f"{scheme}://127.0.0.1:{bare_port}/produce", "single", 1000, 5 if quick else 10
            )
            print(
                f"  {scheme:8s} bare aiocoap, same offer: p50 {pct(bare_lat, 0.5):.2f} ms, "
                f"p99 {pct(bare_lat, 0.99):.2f} ms"
            )
            print(f"  {scheme:8s} p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, answered {len(lat):,}")
        launch.note("(c) ends")
        await ctx.shutdown()

        after_all = rss_mb(broker.pid)
        print(f"(d) RSS after {n_rss:,} records in 10 partitions, on a fresh broker")
        fresh_rss = await rss_after_records(n_rss, launch)
        print(f"  broker RSS {fresh_rss:.1f} MB (the broker that ran (a)-(c): {after_all:.1f} MB)")
        print(f"  bare aiocoap server RSS after the (b)/(c) request load: {rss_mb(bare.pid):.1f} MB")
        print(
            f"SUMMARY a={a:,.0f} rec/s  b_ratio_udp={ratios['coap']:.2f} b_ratio_tcp={ratios['coap+tcp']:.2f}  "
            f"rss_1M={fresh_rss:.1f}MB"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pause-log", type=Path, help="append the brokers' long pauses and the phases to this file")
    parser.add_argument("--loop-fsync-max-ms", type=int, help="the brokers' setting (0: every fsync on threads)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with contextlib.ExitStack() as opened:
        pause_log = opened.enter_context(args.pause_log.open("a")) if args.pause_log else None
        asyncio.run(main(args.quick, BrokerLaunch(pause_log, args.loop_fsync_max_ms)))
