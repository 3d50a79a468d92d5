"""Three consumer group members (separate processes) over a 6-partition topic while producing; one is killed -9:
its partitions move to the others within the session timeout, nothing acknowledged is lost, each partition is read
in order, no partition has two owners in one generation, and the committed offsets survive a restart of every
process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clients.admin import Admin
from clients.producer import Producer
from tests.conftest import REPO
from tests.group_history import consumed, order_violations, owners_per_generation, read_lines
from tests.history_checker import Ack, check
from tests.ports import free_port

pytestmark = pytest.mark.timeout(180)
DEADLINE_S = 30.0


def start_member(url: str, name: str, out: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tests.group_consumer_process", url, "events", "g", name, str(out)]
    with log.open("ab") as sink:
        return subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)


async def wait_for(condition, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await condition():
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up waiting for: {what}")


async def produce(url: str, acks: list[Ack], stop: asyncio.Event, prefix: str) -> None:
    async with Producer(url, acks="all", linger_ms=2) as producer:
        i = 0
        while not stop.is_set():
            value = f"{prefix}-{i:06d}".encode()
            fut = await producer.send("events", value, key=str(i % 12).encode())
            metadata = await fut
            acks.append(Ack(value, metadata.partition, metadata.offset))
            i += 1
            await asyncio.sleep(0.002)


def assignment_of(described: dict) -> dict[str, set[int]]:
    return {m["client_id"]: {a["partition"] for a in m["assignment"]} for m in described["members"]}


async def test_kill_one_member_partitions_move_nothing_lost_offsets_survive_restart(broker_factory, tmp_path):
    broker = broker_factory(data_dir=tmp_path / "data", port=free_port(), log_path=tmp_path / "broker.log")
    broker.start()
    url = broker.url
    async with Admin(url) as admin:
        await admin.create_topic("events", partitions=6)
    outs = {name: tmp_path / f"{name}.jsonl" for name in ("a", "b", "c")}
    members = {name: start_member(url, name, outs[name], tmp_path / f"{name}.log") for name in outs}
    acks: list[Ack] = []
    stop = asyncio.Event()
    producing = asyncio.create_task(produce(url, acks, stop, "w"))
    try:
        async with Admin(url) as admin:

            async def three_members_share_six() -> bool:
                owned = assignment_of(await admin.describe_group("g"))
                return len(owned) == 3 and sorted(p for ps in owned.values() for p in ps) == list(range(6))

            await wait_for(three_members_share_six, "three members sharing the six partitions")
            await wait_for(lambda: asyncio.sleep(0, len(read_lines(list(outs.values()))) > 200), "records consumed")
            victim = next(name for name, ps in assignment_of(await admin.describe_group("g")).items() if ps)
            members[victim].kill()
            members[victim].wait(10)
            killed_at = time.monotonic()

            async def survivors_own_everything() -> bool:
                owned = assignment_of(await admin.describe_group("g"))
                return (
                    victim not in owned
                    and len(owned) == 2
                    and sorted(p for ps in owned.values() for p in ps) == list(range(6))
                )

            await wait_for(survivors_own_everything, "the killed member's partitions moved")
            moved_after = time.monotonic() - killed_at
            print(f"partitions moved {moved_after:.2f} s after kill -9 (session timeout 3 s)")
            count = len(acks)
            await wait_for(lambda: asyncio.sleep(0, len(acks) > count + 200), "more records after the move")
        stop.set()
        await producing

        async def everything_consumed() -> bool:
            seen = {c.value for c in consumed(read_lines(list(outs.values())))}
            return all(a.value in seen for a in acks)

        await wait_for(everything_consumed, "every acknowledged record consumed", timeout=60)
        lines = read_lines(list(outs.values()))
        verdict = check(acks, consumed(lines))
        assert verdict.ok, verdict.summary()
        assert not order_violations(lines), order_violations(lines)[:5]
        assert not owners_per_generation(lines), owners_per_generation(lines)[:5]
    finally:
        stop.set()
        for proc in members.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)

    # Restart every process: the broker, then one member; it continues from the commits (nothing re-read).
    async with Admin(url) as admin:
        committed_before = await admin.group_offsets("g")
    assert sum(committed_before.values()) == len(acks)
    broker.terminate()
    broker.start()
    async with Admin(url) as admin:
        assert await admin.group_offsets("g") == committed_before
    late: list[Ack] = []
    stop = asyncio.Event()
    producing = asyncio.create_task(produce(url, late, stop, "late"))
    await wait_for(lambda: asyncio.sleep(0, len(late) >= 60), "60 records after the restart")
    stop.set()
    await producing
    out = tmp_path / "d.jsonl"
    member = start_member(url, "d", out, tmp_path / "d.log")
    try:
        await wait_for(lambda: asyncio.sleep(0, len(read_lines([out])) >= len(late)), "the new records", timeout=60)
        await asyncio.sleep(1.0)  # anything re-read would show up by now
        values = [x["v"].encode() for x in read_lines([out])]
        assert sorted(values) == sorted(a.value for a in late)  # exactly the new ones: the commits held
    finally:
        member.terminate()
        member.wait(10)
