"""Consumer group figures on this machine (prints, asserts nothing):

1. rebalance time after kill -9 of one of three members: from the kill until the two others own every partition
   (target: session timeout + 1 s at most);
2. group consumption rate: three members (separate processes) against one member reading the same six partitions,
   each from the start of a pre-filled topic until the group's commits reach the log end (target ratio >= 1.5).

    .venv/bin/python bench/group_bench.py [--records 200000] [--value-bytes 100]

Starts its own standalone broker on a free port with a temporary data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clients.admin import Admin  # noqa: E402
from clients.consumer import Consumer  # noqa: E402
from clients.producer import Producer  # noqa: E402
from tests.ports import free_port  # noqa: E402  (one picker: ports handed out once per process)

TOPIC = "bench"
PARTITIONS = 6


async def member(url: str, group: str) -> None:
    """One group member: reads and commits after every batch until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Consumer(TOPIC, bootstrap=url, group_id=group, enable_auto_commit=False, max_records=5000) as c:
        while not stop.is_set():
            if await c.getmany(timeout_ms=200):
                # A refused commit means a rebalance: the next owner reads from the last commit.
                with contextlib.suppress(Exception):
                    await c.commit()


def spawn_member(url: str, group: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--member", url, group],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def fill(url: str, records: int, value_bytes: int) -> int:
    async with Admin(url) as admin:
        await admin.create_topic(TOPIC, partitions=PARTITIONS)
    value = b"x" * value_bytes
    async with Producer(url, linger_ms=20) as producer:
        for i in range(records):
            await producer.send(TOPIC, value, partition=i % PARTITIONS)
        await producer.flush()
    return records


async def wait_committed(url: str, group: str, total: int, timeout: float = 600) -> float:
    started = time.monotonic()
    async with Admin(url) as admin:
        while time.monotonic() - started < timeout:
            try:
                if sum((await admin.group_offsets(group)).values()) >= total:
                    return time.monotonic()
            except Exception:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"group {group} did not finish")


async def consumption_rates(url: str, group: str, members: int, total: int) -> tuple[float, float]:
    """(records/s from process start to the last commit, records/s once every member holds its partitions).

    The second is the group's consumption rate proper: process start-up and the join barrier are one-off costs
    that grow with the member count and say nothing about how fast a settled group reads."""
    started = time.monotonic()
    procs = [spawn_member(url, group) for _ in range(members)]
    try:
        settled_at, committed_then = await wait_settled(url, group, members)
        finished = await wait_committed(url, group, total)
        return total / (finished - started), (total - committed_then) / (finished - settled_at)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


async def wait_settled(url: str, group: str, members: int, timeout: float = 120) -> tuple[float, int]:
    """When the group is stable with all its members, and how much it had committed by then."""
    deadline = time.monotonic() + timeout
    async with Admin(url) as admin:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                described = await admin.describe_group(group)
                if described.get("state") == "stable" and len(described.get("members", [])) == members:
                    return time.monotonic(), sum(int(o["offset"]) for o in described.get("offsets", []))
            await asyncio.sleep(0.02)
    raise TimeoutError(f"group {group} did not settle with {members} members")


async def rebalance_after_kill(url: str) -> float:
    procs = [spawn_member(url, "kill-bench") for _ in range(3)]
    try:
        async with Admin(url) as admin:

            async def owners() -> list[dict[str, Any]]:
                try:
                    return list((await admin.describe_group("kill-bench"))["members"])
                except Exception:
                    return []

            while True:
                ms = await owners()
                if len(ms) == 3 and all(m["assignment"] for m in ms):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            killed = time.monotonic()
            while True:
                ms = await owners()
                if len(ms) == 2 and sum(len(m["assignment"]) for m in ms) == PARTITIONS:
                    return time.monotonic() - killed
                await asyncio.sleep(0.02)
    finally:
        for p in procs[1:]:
            p.terminate()
            p.wait(10)


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        broker = subprocess.Popen(
            [sys.executable, "-m", "pi_broker.service", "--bind", "127.0.0.1", "--port", str(port), "--data-dir", data],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"coap://127.0.0.1:{port}"
        try:
            await asyncio.sleep(1.5)
            total = await fill(url, args.records, args.value_bytes)
            print(f"machine: {os.cpu_count()} cores; topic {TOPIC}: {PARTITIONS} partitions, {total} records")
            rebalance = await rebalance_after_kill(url)
            print(f"rebalance after kill -9 of 1 of 3 members: {rebalance:.2f} s (session timeout 3.0 s)")
            one_all, one = await consumption_rates(url, "one", 1, total)
            three_all, three = await consumption_rates(url, "three", 3, total)
            print(f"1 member:  {one:9.0f} records/s settled ({one_all:.0f} incl. process start and join)")
            print(f"3 members: {three:9.0f} records/s settled ({three_all:.0f} incl. process start and join)")
            print(f"ratio 3 members / 1 member: {three / one:.2f} settled ({three_all / one_all:.2f} incl. start-up)")
        finally:
            broker.terminate()
            broker.wait(10)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--member":
        asyncio.run(member(sys.argv[2], sys.argv[3]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--records", type=int, default=200_000)
        parser.add_argument("--value-bytes", type=int, default=100)
        asyncio.run(main(parser.parse_args()))
