"""Where benchmark (b) over CoAP over TCP loses its time: prints figures, asserts nothing.

    .venv/bin/python bench/durability_cost_bench.py             # 3 alternating rounds: 20 s to 4 minutes by the CPU
    .venv/bin/python bench/durability_cost_bench.py --rounds 1  # a smoke run
    .venv/bin/python bench/durability_cost_bench.py --forms fsync,burst-2ms,burst-0.5ms --cpu-tax-us 200
                                                  # some forms only, at about a Pi's pace
    .venv/bin/python bench/durability_cost_bench.py --rounds 5 --forms bare-answer,bare-format,fsync,fsync+10us
                                                  # what the answer and the broker's own CPU cost the ratio

Runs broker_bench's (b) (one record per request, 16 in flight, CoAP over TCP, default topic: acknowledged after the
fsync) against the broker in seven forms (or those `--forms` names, which may add the forms after them), and the
bare aiocoap server beside them:

- `fsync`: the broker as shipped (on this fast disk it fsyncs on its event loop once 16 rounds were timed);
- `linger-2ms`: the broker as shipped, except that a round on the event loop waits up to 2 ms for more requests
  (the threads' linger) instead of 0.5 ms;
- `burst-2ms`: the broker as it was from stop 19 to stop 31: a burst of requests read at once, on the event loop, is
  split into a round of its own once its oldest write is 2 ms old, whatever the broker's pace (burst_pace.py);
- `burst-0.5ms`: the broker as it was before 2026-12-02's stop 19: the same at 0.5 ms (both lingers 0.5 ms);
- `threads`: the broker as shipped with `--loop-fsync-max-ms 0`, so that every fsync runs on an fsync thread, as on
  a slow disk;
- `sleep`: every fsync replaced by a sleep of SLEEP_S, about what an fsync takes under this load: the same wait
  for the producers, without any disk I/O;
- `no-fsync`: every fsync replaced by nothing: the group-commit rounds, threads and acknowledgement queues all
  still run, with no wait;
- `fsync+Nus` (any N, named only with `--forms`): the broker as shipped with N µs of busy CPU added to every
  produce it appends, and nothing added to the client or the bare server: how much of the ratio each microsecond of
  the broker's own CPU per request costs, so what a cheaper produce path would buy;
- `bare-answer` (named only with `--forms`): no broker but a second bare aiocoap server, answering every request
  with the broker's answer to a one-record produce (its CBOR offsets, Content-Format 60) instead of an empty 2.04:
  what the answer alone costs the client and the server, which the ratio counts against the broker;
- `bare-format` (named only with `--forms`): the same with an empty answer that carries Content-Format 60: how much
  of that is the option rather than the payload.

`linger-2ms`, `burst-2ms`, `burst-0.5ms`, `sleep` and `no-fsync` are diagnostics made by patching the broker process
this script starts; nothing in the product can turn its fsyncs off. For each form it prints the rate, the ratio to the
bare server, the client's and the broker's CPU per request, the interrupts per request on the whole machine, and the KiB
written to the device per request (ext4's own count for the filesystem holding the logs: what an SD card's wear counts).

`--cpu-tax-us N` emulates a slower CPU, about a Pi's at 200: N µs of busy CPU are added to every produce the broker
appends, to every request the bare server answers and to every answer the client takes. The device is this
machine's still, so the ratios then show how the round rules fare at a Pi's pace, not what a Pi would measure.

For the broker's forms it also prints how long a group-commit round's fsync took under that load and how many
requests a round held. The wall and CPU time are taken in the broker process around each FlushTicket.sync, which
adds about a microsecond a round. Before the rounds it syncs the same writes on the otherwise idle machine: a
round's one-record batches appended to a partition log, then its flush ticket synced. The broker's loop
waits for its round's fsync, so the fsync's wall time divided by the requests in a round is what each request pays
for its durability.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiocoap

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is no package: reuse broker_bench as a module
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests/ports.py and tests/processes.py
from bare_coap_server import burn_cpu
from broker_bench import VALUE, rate_in_flight, start_bare, stop
from pause_log import time_flush_syncs
from proc_readings import cpu_seconds

from clients import Admin
from pi_broker.log.partition_log import PartitionLog
from pi_broker.partition import Partition
from pikafka.records import Record, encode_batch
from pikafka.topic_config import TopicConfig
from tests.ports import free_port
from tests.processes import wait_for_port

REPO = Path(__file__).resolve().parent.parent
SLEEP_S = 0.0004  # median fsync under this benchmark's load on the 2-core machine (docs/benchmarks-history.md)
MODES = ("fsync", "linger-2ms", "burst-2ms", "burst-0.5ms", "threads", "sleep", "no-fsync")
# Forms that are a second bare server answering otherwise than with an empty 2.04, by bare_coap_server's --answer.
BARE_ANSWER_FORMS = {"bare-answer": "produce", "bare-format": "format"}
EXTRA_CPU_FORM = re.compile(r"fsync\+(\d+)us")  # the shipped broker, N µs of busy CPU added to every append
REQUESTS = 4000
FSYNC_LOG_ENV = "PIKAFKA_BENCH_FSYNC_LOG"  # where the broker process writes its fsync timings as it exits
ROUND_REQUESTS = 8  # requests a round holds in this benchmark (16 in flight: one half answered, one half synced)
CPU_TAX_ENV = "PIKAFKA_BENCH_CPU_TAX_US"  # busy CPU the broker process adds to every append (--cpu-tax-us)


def serve(mode: str, argv: list[str]) -> int:
    """In the broker process: replace fsync as `mode` says, then run the broker as `pi-broker` would."""
    import pi_broker.broker as broker
    import pi_broker.log.flush_ticket as flush_ticket
    from pi_broker.group_commit import GroupCommit
    from pi_broker.service import main

    if mode == "threads":
        argv = [*argv, "--loop-fsync-max-ms", "0"]
    elif mode == "linger-2ms":
        # The broker builds its GroupCommit by this name; the partial changes only the loop's linger.
        setattr(broker, "GroupCommit", functools.partial(GroupCommit, loop_linger_s=0.002))  # noqa: B010
    elif mode == "burst-2ms":
        # A floor at the ceiling: the burst's bound stays 2 ms whatever the pace.
        setattr(broker, "GroupCommit", functools.partial(GroupCommit, min_burst_s=0.002))  # noqa: B010
    elif mode == "burst-0.5ms":
        # On the loop max_linger_s only caps bursts; the threads' rounds, before the placement moves to the loop,
        # fall within the warm-up.
        setattr(broker, "GroupCommit", functools.partial(GroupCommit, max_linger_s=0.0005))  # noqa: B010
    elif mode != "fsync":

        def fake_fsync(fd: int) -> None:
            if mode == "sleep":
                time.sleep(SLEEP_S)

        class PatchedOs:
            """os for flush_ticket, with fsync replaced; everything else (dup, close) is the real one."""

            fsync = staticmethod(fake_fsync)
            fdatasync = staticmethod(fake_fsync)

            def __getattr__(self, name: str) -> object:
                return getattr(os, name)

        flush_ticket.os = PatchedOs()  # type: ignore[attr-defined,assignment]
    cpu_tax_s = int(os.environ.get(CPU_TAX_ENV, "0")) / 1e6
    if cpu_tax_s > 0:
        appended = GroupCommit.appended

        def taxed_appended(self: GroupCommit, partition: Partition, *, urgent: bool = False) -> None:
            burn_cpu(cpu_tax_s)
            appended(self, partition, urgent=urgent)

        setattr(GroupCommit, "appended", taxed_appended)  # noqa: B010
    timings: list[tuple[float, float, float]] = []  # (monotonic end, wall seconds, CPU seconds) of each fsync
    time_flush_syncs(lambda ended, wall, cpu: timings.append((ended, wall, cpu)))
    try:
        return main(argv)
    finally:
        log_path = os.environ.get(FSYNC_LOG_ENV)
        if log_path:
            Path(log_path).write_text(json.dumps(timings))


def interrupts() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("intr "):
            return int(line.split()[1])
    return 0


def device_written_kib(directory: Path | None = None) -> int | None:
    """KiB written to the device holding directory (default: the temporary directory, where the brokers keep their
    logs) since it was mounted, as ext4 counts them (journal included); None if that is no ext4 filesystem."""
    dev = os.stat(directory or tempfile.gettempdir()).st_dev
    name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name
    counter = Path(f"/sys/fs/ext4/{name}/lifetime_write_kbytes")
    return int(counter.read_text()) if counter.exists() else None


@dataclass
class FsyncFigures:
    wall_us: float  # mean wall time of one round's fsync
    cpu_us: float  # mean CPU time of one round's fsync (the broker's thread, kernel included)
    per_round: float  # requests per round


@dataclass
class Sample:
    rate: float
    client_us: float  # client CPU per request
    server_us: float  # broker (or bare server) CPU per request, all threads
    interrupts: float  # interrupts per request, whole machine
    device_kib: float | None  # KiB written to the device per request (an SD card's wear), whole filesystem
    window: tuple[float, float] = (0.0, 0.0)  # monotonic start and end of the measured requests
    fsync: FsyncFigures | None = None  # the broker's fsync rounds within the window (None for the bare server)


def broker_fsyncs(log_path: Path, window: tuple[float, float]) -> FsyncFigures | None:
    """The broker's fsyncs that ended within the measured window, from the timings it wrote as it exited."""
    try:
        timings = json.loads(log_path.read_text())
    except (OSError, ValueError):
        return None
    inside = [(wall, cpu) for ended, wall, cpu in timings if window[0] <= ended <= window[1]]
    if not inside:
        return None
    return FsyncFigures(
        wall_us=statistics.mean(wall for wall, _ in inside) * 1e6,
        cpu_us=statistics.mean(cpu for _, cpu in inside) * 1e6,
        per_round=REQUESTS / len(inside),
    )


def idle_fsync_reference(rounds: int = 400) -> FsyncFigures:
    """The write pattern of (b)'s rounds, synced on the idle machine through the broker's own log: ROUND_REQUESTS
    one-record batches appended to a PartitionLog, then its flush ticket synced, as a group-commit round does."""
    batch = encode_batch([Record(VALUE)])
    walls: list[float] = []
    cpus: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pikafka-bench-fsync-") as tmp:
        log = PartitionLog.open(Path(tmp), TopicConfig())
        try:
            for round_no in range(rounds + 1):
                for _ in range(ROUND_REQUESTS):
                    log.append(batch, leader_epoch=0)
                ticket = log.flush_ticket()
                cpu_started, started = time.thread_time(), time.perf_counter()
                ticket.sync()
                wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
                log.complete_flush(ticket)
                if round_no > 0:  # the first round also syncs the new segment's directory entry
                    walls.append(wall)
                    cpus.append(cpu)
        finally:
            log.close()
    return FsyncFigures(statistics.mean(walls) * 1e6, statistics.mean(cpus) * 1e6, ROUND_REQUESTS)


async def measure(ctx: aiocoap.Context, port: int, pid: int, cpu_tax_s: float) -> Sample:
    uri = f"coap+tcp://127.0.0.1:{port}/produce"
    await rate_in_flight(ctx, uri, "single", 300, cpu_tax_s=cpu_tax_s)  # warm-up
    me = os.getpid()
    c0, s0, i0, w0 = cpu_seconds(me), cpu_seconds(pid), interrupts(), device_written_kib()
    t0 = time.monotonic()
    rate = await rate_in_flight(ctx, uri, "single", REQUESTS, cpu_tax_s=cpu_tax_s)
    t1 = time.monotonic()
    c1, s1, i1 = cpu_seconds(me), cpu_seconds(pid), interrupts()
    await asyncio.sleep(0.05)  # the last round's writes reach the counter when its fsync returns; a margin for it
    w1 = device_written_kib()
    written = None if w0 is None or w1 is None else (w1 - w0) / REQUESTS
    return Sample(rate, (c1 - c0) / REQUESTS * 1e6, (s1 - s0) / REQUESTS * 1e6, (i1 - i0) / REQUESTS, written, (t0, t1))


async def broker_sample(ctx: aiocoap.Context, form: str, cpu_tax_us: int) -> Sample:
    mode, broker_tax_us = form, cpu_tax_us
    if extra := EXTRA_CPU_FORM.fullmatch(form):
        mode, broker_tax_us = "fsync", cpu_tax_us + int(extra.group(1))  # the broker's side only
    with tempfile.TemporaryDirectory(prefix="pikafka-bench-durability-") as tmp:
        port = free_port()
        cmd = [sys.executable, __file__, "--serve", mode, "--id", "1", "--bind", "127.0.0.1", "--port", str(port)]
        log_path = Path(tmp) / "fsyncs.json"  # beside the data dir, not in it
        data_dir = Path(tmp) / "data"
        env = {**os.environ, FSYNC_LOG_ENV: str(log_path), CPU_TAX_ENV: str(broker_tax_us)}
        proc = subprocess.Popen([*cmd, "--data-dir", str(data_dir)], cwd=REPO, stdout=subprocess.DEVNULL, env=env)
        try:
            wait_for_port(proc, port, None, "broker", 20.0)
            admin = Admin(bootstrap=f"coap://127.0.0.1:{port}")
            await admin.create_topic("single", partitions=1, replication_factor=1)
            await admin.close()
            sample = await measure(ctx, port, proc.pid, cpu_tax_us / 1e6)
        finally:
            stop(proc)
        sample.fsync = broker_fsyncs(log_path, sample.window)
        return sample


async def main(rounds: int, forms: tuple[str, ...], cpu_tax_us: int) -> None:
    idle = idle_fsync_reference()
    ctx = await aiocoap.Context.create_client_context()
    bare_port = free_port()
    bare = start_bare(bare_port, cpu_tax_us)
    answering: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    samples: dict[str, list[Sample]] = {name: [] for name in ("bare", *forms)}
    try:
        for form in forms:
            if form in BARE_ANSWER_FORMS:
                port = free_port()
                answering[form] = port, start_bare(port, cpu_tax_us, answer=BARE_ANSWER_FORMS[form])
        for _ in range(rounds):
            # Alternating spreads the machine's drift over every form; each broker starts fresh.
            samples["bare"].append(await measure(ctx, bare_port, bare.pid, cpu_tax_us / 1e6))
            for form in forms:
                if form in answering:
                    port, server = answering[form]
                    sample = await measure(ctx, port, server.pid, cpu_tax_us / 1e6)
                else:
                    sample = await broker_sample(ctx, form, cpu_tax_us)
                samples[form].append(sample)
    finally:
        await ctx.shutdown()
        stop(bare)
        for _, server in answering.values():
            stop(server)
    bare_rate = statistics.median(s.rate for s in samples["bare"])
    print(f"(b) over CoAP over TCP, {REQUESTS:,} requests, 16 in flight, medians of {rounds} alternating rounds")
    print(
        f"  a round's writes ({ROUND_REQUESTS} one-record batches) synced on the idle machine: fdatasync "
        f"{idle.wall_us:.0f} us ({idle.cpu_us:.0f} us CPU)"
    )
    for name, got in samples.items():
        rate = statistics.median(s.rate for s in got)
        written = [s.device_kib for s in got if s.device_kib is not None]
        fsyncs = [s.fsync for s in got if s.fsync is not None]
        print(
            f"  {name:11s} {rate:6,.0f} req/s  ratio {rate / bare_rate:.2f}  "
            f"client {statistics.median(s.client_us for s in got):4.0f} us/req  "
            f"server {statistics.median(s.server_us for s in got):4.0f} us/req  "
            f"interrupts {statistics.median(s.interrupts for s in got):.1f}/req  "
            + (f"device {statistics.median(written):.2f} KiB/req" if written else "device n/a (no ext4)")
            + (
                f"  fsync {statistics.median(f.wall_us for f in fsyncs):.0f} us "
                f"({statistics.median(f.cpu_us for f in fsyncs):.0f} us CPU) a round of "
                f"{statistics.median(f.per_round for f in fsyncs):.1f}"
                if fsyncs
                else ""
            )
        )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forms", default=",".join(MODES), help="comma-separated forms of the broker to run")
    parser.add_argument("--cpu-tax-us", type=int, default=0, help="busy CPU added to every request on each side")
    args = parser.parse_args()
    chosen = tuple(form for form in args.forms.split(",") if form)
    extra = tuple(BARE_ANSWER_FORMS)
    if unknown := [form for form in chosen if form not in MODES + extra and not EXTRA_CPU_FORM.fullmatch(form)]:
        parser.error(f"unknown forms {', '.join(unknown)}; known: {', '.join(MODES + extra)} and fsync+Nus")
    asyncio.run(main(args.rounds, chosen, args.cpu_tax_us))
