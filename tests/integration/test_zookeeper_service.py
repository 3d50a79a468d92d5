"""The real `python -m pi_zookeeper.service` process, spoken to by plain aiocoap clients acting as brokers and admins.

A tiny aiocoap server in the test plays a broker's /cluster/metadata endpoint to prove pushes arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource as resource
import cbor2
import pytest
from aiocoap.numbers.codes import Code

from tests.conftest import REPO
from tests.ports import free_port
from tests.processes import stop_gracefully, wait_for_port

HB_MS = 100
SESSION_MS = 600


@dataclass
class ZookeeperProcess:
    data_dir: Path
    port: int
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pi_zookeeper.service",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--heartbeat-interval-ms",
            str(HB_MS),
            "--session-timeout-ms",
            str(SESSION_MS),
            *self.extra_args,
        ]

    def start(self, timeout: float = 15.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        wait_for_port(self.proc, self.port, self.log_path, "zookeeper", timeout)

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return stop_gracefully(self.proc, timeout)

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def zk(tmp_path: Path) -> Iterator[ZookeeperProcess]:
    z = ZookeeperProcess(tmp_path / "zk-data", free_port(), tmp_path / "zk.log")
    z.start()
    try:
        yield z
    finally:
        z.terminate()


@pytest.fixture
async def client() -> AsyncIterator[aiocoap.Context]:
    ctx = await aiocoap.Context.create_client_context()
    try:
        yield ctx
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await ctx.shutdown()


@dataclass
class Reply:
    code: Code
    payload: bytes
    content_format: int | None

    def body(self) -> Any:
        return cbor2.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode()


async def call(
    ctx: aiocoap.Context,
    zk: ZookeeperProcess,
    method: Code,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    content_format: int | None = 60,
    accept: int | None = None,
) -> Reply:
    payload = raw if raw is not None else (b"" if body is None else cbor2.dumps(body))
    msg = aiocoap.Message(code=method, uri=f"{zk.url}{path}", payload=payload)
    if payload and content_format is not None:
        msg.opt.content_format = content_format
    if accept is not None:
        msg.opt.accept = accept
    async with asyncio.timeout(10):
        resp = await ctx.request(msg).response
    cf = resp.opt.content_format
    return Reply(resp.code, resp.payload, None if cf is None else int(cf))


def register_body(
    broker_id: int, port: int = 5683, incarnation: str = "i1", cluster_id: str | None = None
) -> dict[str, Any]:
    return {
        "broker_id": broker_id,
        "host": "127.0.0.1",
        "port": port,
        "rack": None,
        "incarnation": incarnation,
        "cluster_id": cluster_id,
    }


async def register(ctx, zk, broker_id, port=5683, incarnation="i1", cluster_id=None) -> dict[str, Any]:
    r = await call(ctx, zk, Code.POST, "/zk/register", register_body(broker_id, port, incarnation, cluster_id))
    assert r.code == Code.CHANGED, r.text
    body: dict[str, Any] = r.body()
    return body


async def heartbeat(ctx, zk, broker_id, incarnation="i1", version=-1, partitions=()) -> Reply:
    body = {
        "broker_id": broker_id,
        "incarnation": incarnation,
        "metadata_version": version,
        "partitions": list(partitions),
    }
    return await call(ctx, zk, Code.POST, "/zk/heartbeat", body)


async def metadata(ctx, zk) -> dict[str, Any]:
    r = await call(ctx, zk, Code.GET, "/metadata")
    assert r.code == Code.CONTENT, r.text
    body: dict[str, Any] = r.body()
    return body


async def create_topic(ctx, zk, name, partitions=1, rf=1, config=None) -> Reply:
    body: dict[str, Any] = {"name": name, "partitions": partitions, "replication_factor": rf}
    if config is not None:
        body["config"] = config
    return await call(ctx, zk, Code.POST, "/topics", body)


@contextlib.asynccontextmanager
async def heartbeating(ctx, zk, broker_ids: list[int], incarnation="i1") -> AsyncIterator[None]:
    """Keep brokers' sessions alive in the background, as real brokers would."""

    stop = asyncio.Event()

    async def loop() -> None:
        # A flag, not only cancel(): Python 3.11's wait_for can swallow a cancellation that races with its result.
        while not stop.is_set():
            for b in broker_ids:
                with contextlib.suppress(Exception):
                    await heartbeat(ctx, zk, b, incarnation)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HB_MS / 1000)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def leaders(md: dict[str, Any], topic: str) -> list[tuple[Any, int, list[int]]]:
    [t] = [t for t in md["topics"] if t["name"] == topic]
    return [(p["leader"], p["leader_epoch"], p["isr"]) for p in t["partitions"]]


# ----------------------------------------------------------------------------------------------------- tests


async def test_register_and_heartbeat(zk, client) -> None:
    reg = await register(client, zk, 1)
    assert len(reg["cluster_id"]) == 32
    assert reg["heartbeat_interval_ms"] == HB_MS and reg["session_timeout_ms"] == SESSION_MS
    md = reg["metadata"]
    assert md["cluster_id"] == reg["cluster_id"] and md["controller"] is None
    assert md["brokers"] == [{"id": 1, "host": "127.0.0.1", "port": 5683, "rack": None, "alive": True}]
    assert md["topics"] == [] and md["deleted_topics"] == []

    r = await heartbeat(client, zk, 1, version=-1)
    assert r.code == Code.CHANGED
    assert r.body()["metadata"]["metadata_version"] == reg["metadata_version"]
    r = await heartbeat(client, zk, 1, version=reg["metadata_version"])
    assert r.body() == {"metadata_version": reg["metadata_version"], "metadata": None}

    r = await heartbeat(client, zk, 2)
    assert r.code == Code.NOT_FOUND and r.text.startswith("UNKNOWN_BROKER: ")
    assert "joined" in zk.log()

    r = await call(client, zk, Code.GET, "/.well-known/core")
    assert r.code == Code.CONTENT
    for path in ("</zk/register>", "</zk/heartbeat>", "</zk/isr>", "</metadata>", "</topics>"):
        assert path in r.text


async def test_dead_broker_loses_leadership_within_session_timeout(zk, client) -> None:
    await register(client, zk, 1)
    await register(client, zk, 2)
    async with heartbeating(client, zk, [1, 2]):
        r = await create_topic(client, zk, "t", partitions=2, rf=2)
        assert r.code == Code.CREATED, r.text
        assert r.body() == {"name": "t", "partitions": 2}
        before = leaders(await metadata(client, zk), "t")
        assert sorted(p[0] for p in before) == [1, 2]  # one leader each
    async with heartbeating(client, zk, [2]):  # broker 1 goes silent
        stopped = time.monotonic()
        while True:
            md = await metadata(client, zk)
            if not md["brokers"][0]["alive"]:
                break
            assert time.monotonic() - stopped < SESSION_MS / 1000 + 1.0, "broker 1 not declared dead in time"
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - stopped
        assert elapsed >= SESSION_MS / 1000 - 0.15  # not before its session ran out either
        after = leaders(md, "t")
        for (old_leader, old_epoch, _), (leader, epoch, isr) in zip(before, after, strict=True):
            assert leader == 2 and isr == [2]
            assert epoch == (old_epoch + 1 if old_leader == 1 else old_epoch)
    assert "partition t-" in zk.log() and "leader 1 -> 2" in zk.log()


async def test_isr_alter_and_fencing(zk, client) -> None:
    await register(client, zk, 1)
    await register(client, zk, 2)
    async with heartbeating(client, zk, [1, 2]):
        assert (await create_topic(client, zk, "t", rf=2)).code == Code.CREATED
        [(leader, epoch, _isr)] = leaders(await metadata(client, zk), "t")
        follower = 3 - leader
        body = {"topic": "t", "partition": 0, "leader_id": leader, "leader_epoch": epoch, "isr": [leader]}
        r = await call(client, zk, Code.POST, "/zk/isr", body)
        assert r.code == Code.CHANGED, r.text
        assert r.body()["isr"] == [leader] and r.body()["leader"] == leader
        stale = dict(body, leader_id=follower, isr=[follower])
        r = await call(client, zk, Code.POST, "/zk/isr", stale)
        assert r.code == Code.PRECONDITION_FAILED and r.text.startswith("FENCED_LEADER_EPOCH: ")


# the test's own broker stand-in is shut down with the zookeeper's connection still open; aiocoap warns about it
@pytest.mark.filterwarnings("ignore:coroutine 'Context._render_to_pipe' was never awaited:RuntimeWarning")
async def test_pushes_arrive_concurrently_despite_a_dead_broker(zk, client) -> None:
    received: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()

    class ClusterMetadata(resource.Resource):  # type: ignore[misc]
        async def render_post(self, request):
            received.put_nowait((time.monotonic(), cbor2.loads(request.payload)))
            return aiocoap.Message(code=Code.CHANGED)

    site = resource.Site()
    site.add_resource(["cluster", "metadata"], ClusterMetadata())
    broker_port = free_port()
    server = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", broker_port), transports=["tcpserver"]
    )
    # a "broker" that accepts connections and never answers: a push to it can only time out
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen()
    try:
        await register(client, zk, 9, port=black_hole.getsockname()[1])
        await register(client, zk, 1, port=broker_port)
        async with heartbeating(client, zk, [1, 9]):
            while not received.empty():
                received.get_nowait()
            sent = time.monotonic()
            assert (await create_topic(client, zk, "pushed")).code == Code.CREATED
            while True:
                at, snap = await asyncio.wait_for(received.get(), 5)
                if any(t["name"] == "pushed" for t in snap["topics"]):
                    break
            # the silent broker 9 (registered first, pushed to first) did not hold it up
            assert at - sent < 0.5
            assert snap["cluster_id"] and {b["id"] for b in snap["brokers"]} == {1, 9}
            # a push to the silent broker is in flight: SIGTERM still exits cleanly and quickly
            assert (await create_topic(client, zk, "another")).code == Code.CREATED
            started = time.monotonic()
            assert zk.terminate() == 0
            assert time.monotonic() - started < 2.0
    finally:
        black_hole.close()
        # aiocoap's TCP server may wait forever on a connection the zookeeper still holds open; bound it
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await server.shutdown()


async def test_restart_keeps_topics_leaders_epochs(zk, client) -> None:
    reg = await register(client, zk, 1)
    await register(client, zk, 2)
    async with heartbeating(client, zk, [1, 2]):
        assert (await create_topic(client, zk, "keep", partitions=3, rf=2)).code == Code.CREATED
        assert (await create_topic(client, zk, "gone")).code == Code.CREATED
        assert (await call(client, zk, Code.DELETE, "/topics/gone")).code == Code.DELETED
    async with heartbeating(client, zk, [2]):
        await asyncio.sleep(SESSION_MS / 1000 + 0.4)  # broker 1 dies: epochs move
        before = await metadata(client, zk)
    assert any(e > 0 for _, e, _ in leaders(before, "keep"))

    started = time.monotonic()
    assert zk.terminate() == 0
    assert time.monotonic() - started < 2.0
    zk.start()

    after = await metadata(client, zk)
    assert after["cluster_id"] == reg["cluster_id"]
    assert after["metadata_version"] >= before["metadata_version"]
    assert leaders(after, "keep") == leaders(before, "keep")
    assert after["deleted_topics"] == ["gone"]
    assert all(not b["alive"] for b in after["brokers"])  # until they heartbeat again
    # broker 2 resumes its session with a plain heartbeat: no re-registration, no election
    r = await heartbeat(client, zk, 2, version=after["metadata_version"])
    assert r.code == Code.CHANGED, r.text
    await asyncio.sleep(SESSION_MS / 1000 / 2)
    md = await metadata(client, zk)
    assert leaders(md, "keep") == leaders(before, "keep")
    assert [b["alive"] for b in md["brokers"]] == [False, True]


async def test_bad_input_is_4xx_one_line_and_service_stays_up(zk, client) -> None:
    await register(client, zk, 1)
    cases: list[tuple[Code, str, dict[str, Any], Code, str]] = [
        (Code.POST, "/zk/register", {"raw": b"\xff\x00garbage"}, Code.BAD_REQUEST, "INVALID_REQUEST"),
        (Code.POST, "/zk/register", {"body": [1, 2]}, Code.BAD_REQUEST, "INVALID_REQUEST"),
        (Code.POST, "/zk/register", {"body": {"broker_id": 3}}, Code.BAD_REQUEST, "INVALID_REQUEST"),
        (Code.POST, "/zk/register", {"body": dict(register_body(3), port="x")}, Code.BAD_REQUEST, "INVALID_REQUEST"),
        (Code.POST, "/zk/register", {"body": dict(register_body(3), broker_id=True)}, Code.BAD_REQUEST, "INVALID"),
        (Code.POST, "/zk/register", {}, Code.BAD_REQUEST, "INVALID_REQUEST"),
        (
            Code.POST,
            "/zk/heartbeat",
            {"body": {"broker_id": 1, "incarnation": "i1", "partitions": "x"}},
            Code.BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            Code.POST,
            "/zk/heartbeat",
            {"body": {"broker_id": 1, "incarnation": "i1", "partitions": [{"topic": 1}]}},
            Code.BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            Code.POST,
            "/zk/isr",
            {"body": {"topic": "nope", "partition": 0, "leader_id": 1, "leader_epoch": 0, "isr": [1]}},
            Code.NOT_FOUND,
            "UNKNOWN_TOPIC_OR_PARTITION",
        ),
        (
            Code.POST,
            "/zk/isr",
            {"body": {"topic": "t", "partition": 0, "leader_id": 1, "leader_epoch": 0, "isr": ["a"]}},
            Code.BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (Code.GET, "/topics/nope", {}, Code.NOT_FOUND, "UNKNOWN_TOPIC_OR_PARTITION"),
        (Code.DELETE, "/topics/nope", {}, Code.NOT_FOUND, "UNKNOWN_TOPIC_OR_PARTITION"),
        (Code.POST, "/topics", {"body": {"name": "../etc"}}, Code.BAD_REQUEST, "INVALID_TOPIC"),
        (
            Code.POST,
            "/topics",
            {"body": {"name": "x", "replication_factor": 5}},
            Code.BAD_REQUEST,
            "INVALID_REPLICATION_FACTOR",
        ),
        (
            Code.POST,
            "/topics",
            {"body": {"name": "x", "config": {"retention_ms": "long"}}},
            Code.BAD_REQUEST,
            "INVALID_CONFIG",
        ),
        (
            Code.POST,
            "/topics",
            {"raw": b"{}", "content_format": 42},
            Code.UNSUPPORTED_CONTENT_FORMAT,
            "UNSUPPORTED_CONTENT_FORMAT",
        ),
        (Code.PUT, "/zk/register", {"body": {}}, Code.METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
        (Code.GET, "/no/such/thing", {}, Code.NOT_FOUND, "NOT_FOUND"),
        (
            Code.POST,
            "/zk/register",
            {"body": register_body(1, cluster_id="other")},
            Code.CONFLICT,
            "CLUSTER_ID_MISMATCH",
        ),
        (
            Code.POST,
            "/zk/register",
            {"body": dict(register_body(1, incarnation="i2"), port=9)},
            Code.CONFLICT,
            "BROKER_ID_IN_USE",
        ),
    ]
    for method, path, kw, code, name in cases:
        r = await call(client, zk, method, path, **kw)
        assert r.code == code, (path, kw, r.code, r.text)
        assert r.text.startswith(name) and ": " in r.text and "\n" not in r.text, (path, r.text)
        assert r.content_format == 0
    md = await metadata(client, zk)
    assert [b["id"] for b in md["brokers"]] == [1]
    assert zk.proc is not None and zk.proc.poll() is None
    assert "Traceback" not in zk.log()


async def test_admin_resources_speak_json(zk, client) -> None:
    await register(client, zk, 1)
    body = json.dumps({"name": "j", "partitions": 2}).encode()
    r = await call(client, zk, Code.POST, "/topics", raw=body, content_format=50, accept=50)
    assert r.code == Code.CREATED and json.loads(r.payload) == {"name": "j", "partitions": 2}
    r = await call(client, zk, Code.GET, "/topics", accept=50)
    assert json.loads(r.payload) == {"topics": ["j"]}
    r = await call(client, zk, Code.GET, "/topics/j")
    t = r.body()
    assert t["name"] == "j" and t["replication_factor"] == 1 and len(t["partitions"]) == 2
    assert t["config"]["min_insync_replicas"] == 1
    r = await call(client, zk, Code.GET, "/metadata?topic=j", accept=50)
    assert [t["name"] for t in json.loads(r.payload)["topics"]] == ["j"]


def test_unparseable_state_file_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "zk"
    data.mkdir()
    (data / "cluster.json").write_text('{"cluster_id": "abc", "brok')
    z = ZookeeperProcess(data, free_port(), tmp_path / "zk.log")
    proc = subprocess.run(z.command(), capture_output=True, cwd=REPO, timeout=30)
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "cluster.json" in err
    assert (data / "cluster.json").read_text() == '{"cluster_id": "abc", "brok'


async def test_second_zookeeper_on_the_same_port_refuses_to_start(zk, tmp_path: Path) -> None:
    # aiocoap binds with SO_REUSEPORT: without the check a second zookeeper, with state of its own, would start and
    # answer part of the brokers' heartbeats, and the two would each decide leaders for a half-seen cluster.
    second = ZookeeperProcess(tmp_path / "other-zk-data", zk.port, tmp_path / "other-zk.log")
    proc = await asyncio.to_thread(subprocess.run, second.command(), capture_output=True, cwd=REPO, timeout=30)
    assert proc.returncode == 1, proc
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and f"port {zk.port} on 127.0.0.1 is in use" in err, err
    assert not (tmp_path / "other-zk-data" / "cluster.json").exists()
    # The first one still has the port to itself: every request reaches it.
    for _ in range(10):
        fresh = await aiocoap.Context.create_client_context()
        try:
            reply = await fresh.request(aiocoap.Message(code=Code.GET, uri=f"{zk.url}/metadata")).response
        finally:
            await fresh.shutdown()
        assert reply.code == Code.CONTENT
    assert zk.proc is not None and zk.proc.poll() is None


def test_sigterm_exits_zero_quickly(zk) -> None:
    started = time.monotonic()
    assert zk.terminate() == 0
    assert time.monotonic() - started < 2.0
    state = json.loads((zk.data_dir / "cluster.json").read_text())
    assert state["format"] == 1 and len(state["cluster_id"]) == 32
