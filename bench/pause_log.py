"""A broker whose long pauses are logged as they happen: the diagnostic behind `broker_bench.py --pause-log FILE`.

    .venv/bin/python bench/pause_log.py BROKER-ARGS...   # runs the broker as `pi-broker BROKER-ARGS...` would

Writes one line to stderr for every garbage collection that took over GC_LOG_S and every fsync of a partition's
group-commit round that took over FSYNC_LOG_S. Each line carries the wall-clock time it ended, so that it lines up
with the phase marks broker_bench.py writes into the same file, and the broker's pid; a collection's line also has
the broker's RSS. A full collection stops the broker's event loop for its whole length; an fsync does when the loop
syncs its rounds itself. Stop 37 traced (c)'s outliers over TCP with it (docs/benchmarks.md). The callback costs
the broker one call per collection and the timing four clock reads per fsync, so figures measured with it are
reported apart from plain runs.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from proc_readings import rss_mb

GC_LOG_S = 0.005
FSYNC_LOG_S = 0.010


def stamp() -> str:
    """Wall-clock time to the millisecond: the broker and the benchmark are separate processes."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def mark(stream: TextIO, text: str) -> None:
    print(f"{stamp()} {text}", file=stream, flush=True)


def time_flush_syncs(record: Callable[[float, float, float], None]) -> None:
    """From now on, report every group-commit fsync of this process as `record(monotonic end, wall seconds, CPU
    seconds of the syncing thread)`, from whichever thread ran it."""
    from pi_broker.log.flush_ticket import FlushTicket

    sync = FlushTicket.sync

    def timed_sync(ticket: FlushTicket) -> None:
        cpu, started = time.thread_time(), time.monotonic()
        try:
            sync(ticket)
        finally:
            ended = time.monotonic()
            record(ended, ended - started, time.thread_time() - cpu)

    setattr(FlushTicket, "sync", timed_sync)  # noqa: B010


def log_pauses(stream: TextIO) -> None:
    """From now on, log this process's long garbage collections and fsync rounds to `stream`."""
    started = 0.0  # of the collection under way: the callback is called at its start and at its end

    def on_collection(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
            return
        took = time.perf_counter() - started
        if took > GC_LOG_S:
            generation, collected = info["generation"], info["collected"]
            rss = rss_mb(os.getpid())
            mark(
                stream,
                f"pid {os.getpid()}: gc gen{generation} {took * 1000:.1f} ms, {collected} collected, RSS {rss:.0f} MB",
            )

    def on_sync(ended: float, wall: float, cpu: float) -> None:
        if wall > FSYNC_LOG_S:
            mark(stream, f"pid {os.getpid()}: fsync {wall * 1000:.1f} ms")

    gc.callbacks.append(on_collection)
    time_flush_syncs(on_sync)


if __name__ == "__main__":
    log_pauses(sys.stderr)
    from pi_broker.service import main

    sys.exit(main(sys.argv[1:]))
