"""A cluster on a small LAN of network namespaces, for faults loopback cannot express (a network partition).

Layout, all made by the test and deleted at teardown (every name carries `pkf-<pytest pid>-<random>-` so parallel
and leftover runs never collide):

    namespace pkf-…-lan: bridge br0 ── veth ── namespace pkf-…-zk   10.213.N.2   the zookeeper
                                   ├── veth ── namespace pkf-…-b1   10.213.N.11  broker 1 (b2: .12, b3: .13)
                                   └── veth ── namespace pkf-…-cl   10.213.N.100 the client agent

Nothing touches the host's interfaces, routes or firewall: the veth pairs are created inside the bridge's
namespace with their other end placed straight into a node's namespace, and the LAN has no way out.

The test process itself stays in the host namespace and cannot reach that LAN, so everything a client does runs in
the client namespace as the *agent*: `python -m tests.netns_cluster agent SPEC`, a small RPC server on its
stdin/stdout (one JSON object a line) that drives the loopback tests' own ClusterClient and RetryingProducer
(tests/cluster_fixtures.py) against the LAN addresses and writes its history (acknowledged writes with their
partition and offset, consumed records, stale probes) as JSON lines the test reads back.

A partition is a pair of nftables chains in the cut-off node's namespace that drop everything to and from the other
nodes' addresses (the `nftables` Debian package); the client's address is left alone, so a cut-off leader stays
reachable from the client and can take writes it cannot replicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
from aiocoap import Code, Context, Message

from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import CT_CBOR
from pikafka.records import Record, decode_records, encode_batch, iter_batches
from tests.cluster_fixtures import (
    DEADLINE_S,
    FETCH_WAIT_MS,
    HEARTBEAT_MS,
    LAG_MS,
    SESSION_MS,
    Cluster,
    ClusterBroker,
    ClusterClient,
    Reply,
    RetryingProducer,
    ZookeeperProcess,
    producer_id_for,
)
from tests.conftest import REPO
from tests.history_checker import Ack, Consumed

PREFIX = "pkf"
# Every node listens on its own port even though each has a namespace to itself: the agent reuses ClusterClient,
# whose requests name only a port, and routes each port to its node's address.
ZK_PORT = 5680
BROKER_BASE_PORT = 5690
ZK_HOST = 2
BROKER_HOST_BASE = 10
CLIENT_HOST = 100
CALL_TIMEOUT_S = 2 * DEADLINE_S + 10  # the agent's own waits give up after DEADLINE_S; one call may hold two
PARTITION_TABLE = "pkf_partition"
_OWN_NAME = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]{{6}}-[a-z0-9]+$")


# ------------------------------------------------------------------------------------------------ prerequisites


def why_unavailable() -> str | None:
    """None when this machine can build the LAN, else the reason (for pytest.skip; see require_lan)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (Debian package {package})"
    probe = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def require_lan() -> None:
    """Skip the calling test when the LAN cannot be built: not root, or no `ip netns` or `nft`. Except in CI (root,
    CI=true), where a missing tool means .ci/run lacks an install step and must fail, not be skipped unseen."""
    reason = why_unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true" and os.geteuid() == 0:
        pytest.fail(f"{reason}: .ci/run must install iproute2 and nftables")
    pytest.skip(reason)


def _run(*argv: str, stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


def _pids_in(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30)
    return [int(p) for p in done.stdout.split()]


def _kill_and_delete(netns: str) -> None:
    # A namespace outlives its name while a process is still inside it, so whatever is left there goes first.
    for pid in _pids_in(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)


def cleanup_stale_namespaces() -> list[str]:
    """Delete the namespaces (and kill the processes in them) of earlier runs whose pytest process is gone, e.g.
    one killed with -9 before its teardown ran. Namespaces of a run still alive are left alone."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    removed = []
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _OWN_NAME.match(name)
        if match is None:
            continue
        owner = int(match.group(1))
        try:
            os.kill(owner, 0)
            continue  # its run is still going (or the pid was reused: then the leftover waits for a later run)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _kill_and_delete(name)
        removed.append(name)
    return removed


# ------------------------------------------------------------------------------------------------------ the LAN


@dataclass
class NetnsLan:
    """One bridge in a namespace of its own and one namespace per node, each joined to it by a veth pair."""

    tag: str
    subnet: str  # the first three octets, e.g. "10.213.57"
    addresses: dict[str, str] = field(default_factory=dict)  # node -> address
    created: list[str] = field(default_factory=list)  # every namespace made so far, for destroy()

    @classmethod
    def create(cls, nodes: dict[str, int]) -> NetnsLan:
        """nodes: name -> last octet. The third octet is random too: LANs of parallel runs are isolated from each
        other anyway, this only keeps their logs from showing the same addresses."""
        lan = cls(tag=f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}", subnet=f"10.213.{secrets.randbelow(254) + 1}")
        try:
            bridge = lan.netns("lan")
            _run("ip", "netns", "add", bridge)
            lan.created.append(bridge)
            _run("ip", "-n", bridge, "link", "set", "lo", "up")
            _run("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", bridge, "link", "set", "br0", "up")
            for node, octet in nodes.items():
                ns = lan.netns(node)
                _run("ip", "netns", "add", ns)
                lan.created.append(ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                port = f"v-{node}"
                _run("ip", "-n", bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _run("ip", "-n", bridge, "link", "set", port, "master", "br0", "up")
                address = f"{lan.subnet}.{octet}"
                _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                lan.addresses[node] = address
        except BaseException:
            lan.destroy()
            raise
        return lan

    def netns(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def address(self, node: str) -> str:
        return self.addresses[node]

    def exec_argv(self, node: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(node), *argv]

    def cut_off(self, node: str, others: list[str]) -> None:
        """Drop every packet between `node` and `others`, both ways, inside `node`'s namespace; traffic with any
        node not listed (the client) still flows. Dropping (not rejecting) is what a dead link does: TCP peers see
        silence, not a reset. (A datagram the node itself sends to a listed address fails locally with EPERM; the
        brokers and the zookeeper talk to each other over TCP only, where the drop stays silent.)"""
        peers = ", ".join(self.address(o) for o in others)
        ruleset = f"""
table inet {PARTITION_TABLE} {{
    chain input {{ type filter hook input priority filter; policy accept; ip saddr {{ {peers} }} drop; }}
    chain output {{ type filter hook output priority filter; policy accept; ip daddr {{ {peers} }} drop; }}
}}
"""
        _run(*self.exec_argv(node, ["nft", "-f", "-"]), stdin=ruleset)

    def heal(self, node: str) -> None:
        _run(*self.exec_argv(node, ["nft", "delete", "table", "inet", PARTITION_TABLE]))

    def destroy(self) -> None:
        for ns in self.created:
            _kill_and_delete(ns)


# -------------------------------------------------------------------------------------------------- the services


def _listening(pid: int, port: int) -> bool:
    """Whether any socket in the network namespace of `pid` listens on TCP `port`. The test cannot connect into the
    LAN to find out, but /proc/PID/net/tcp shows that process's namespace (state 0A is LISTEN)."""
    suffix = f":{port:04X}"
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(suffix) and fields[3] == "0A":
                    return True
    return False


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log_path: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        if _listening(proc.pid, port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not listening after {timeout}s:\n{log_path.read_text(errors='replace')}")


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    # `ip netns exec` execs the command in place, so the pid is the service's own and signals reach it directly.
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    finally:
        log.close()


@dataclass
class NetnsZookeeper(ZookeeperProcess):
    lan: NetnsLan | None = None
    node: str = "zk"

    @property
    def host(self) -> str:
        assert self.lan is not None
        return self.lan.address(self.node)

    @property
    def url(self) -> str:
        return f"coap://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        assert self.lan is not None
        cmd = [
            sys.executable,
            "-m",
            "pi_zookeeper.service",
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--heartbeat-interval-ms",
            str(HEARTBEAT_MS),
            "--session-timeout-ms",
            str(SESSION_MS),
        ]
        self.proc = _spawn(self.lan.exec_argv(self.node, cmd), self.log_path)
        _wait_listening(self.proc, self.port, self.log_path, "zookeeper", timeout)


@dataclass
class NetnsBroker(ClusterBroker):
    lan: NetnsLan | None = None
    node: str = ""

    @property
    def host(self) -> str:
        assert self.lan is not None
        return self.lan.address(self.node)

    @property
    def url(self) -> str:
        return f"coap://{self.host}:{self.port}"

    def launch(self) -> None:
        assert self.lan is not None
        cmd = [
            sys.executable,
            "-m",
            "pi_broker.service",
            "--id",
            str(self.broker_id),
            "--bind",
            self.host,
            "--advertised-host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *(["--zookeeper", self.zookeeper] if self.zookeeper else []),
            *self.extra_args,
        ]
        self.proc = _spawn(self.lan.exec_argv(self.node, cmd), self.log_path)

    def start(self, timeout: float = 15.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        _wait_listening(self.proc, self.port, self.log_path, f"broker {self.broker_id}", timeout)


# ---------------------------------------------------------------------------------------- the agent, test side


class AgentError(AssertionError):
    """The agent answered a call with an error (its text carries the agent's reason and the cluster logs)."""


@dataclass
class ClientAgent:
    """The test's handle on the agent process in the client namespace."""

    proc: asyncio.subprocess.Process
    history_path: Path
    log_path: Path

    @classmethod
    async def start(cls, lan: NetnsLan, spec: dict[str, Any], log_path: Path) -> ClientAgent:
        argv = lan.exec_argv("cl", [sys.executable, "-m", "tests.netns_cluster", "agent", json.dumps(spec)])
        with open(log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, cwd=REPO
            )
        agent = cls(proc, Path(spec["history"]), log_path)
        await agent.call("ping")
        return agent

    async def call(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), CALL_TIMEOUT_S)
        except TimeoutError:
            raise AgentError(f"agent gave no answer to {op} in {CALL_TIMEOUT_S}s\n{self.log_tail()}") from None
        if not line:
            raise AgentError(f"agent exited during {op}\n{self.log_tail()}")
        answer = json.loads(line)
        if "error" in answer:
            raise AgentError(f"{op}: {answer['error']}")
        return answer["result"]

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
        return ""

    def history(self) -> tuple[list[Ack], list[Consumed], dict[bytes, tuple[str, int]], list[dict[str, Any]]]:
        """(acks, consumed, order key for the checker, stale probes) from the agent's JSON lines."""
        acks: list[Ack] = []
        consumed: list[Consumed] = []
        order: dict[bytes, tuple[str, int]] = {}
        stale: list[dict[str, Any]] = []
        for line in self.history_path.read_text().splitlines():
            entry = json.loads(line)
            value = entry.get("value", "").encode()
            if entry["kind"] == "ack":
                acks.append(Ack(value, entry["partition"], entry["offset"]))
                order[value] = (entry["writer"], entry["sequence"])
            elif entry["kind"] == "consumed":
                consumed.append(Consumed(value, entry["partition"], entry["offset"]))
            elif entry["kind"] == "stale":
                stale.append(entry)
        return acks, consumed, order, stale

    async def close(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # end of input: the agent stops its producers and exits
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@dataclass
class NetnsCluster:
    lan: NetnsLan
    cluster: Cluster  # the same process handles as the loopback tests (terminate, pause, log_bytes, logs)
    agent: ClientAgent

    def broker(self, broker_id: int) -> NetnsBroker:
        b = self.cluster.broker(broker_id)
        assert isinstance(b, NetnsBroker)
        return b

    def logs(self) -> str:
        return f"{self.cluster.logs()}\n==== agent\n{self.agent.log_tail()}"

    async def call(self, op: str, **args: Any) -> Any:
        """An agent call whose failure carries the tail of every process log."""
        try:
            return await self.agent.call(op, **args)
        except AgentError as exc:
            raise AgentError(f"{exc}\n{self.logs()}") from None

    async def wait_for(self, condition: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"gave up waiting for: {what}\n{self.logs()}")


@contextlib.asynccontextmanager
async def netns_cluster(tmp_path: Path, brokers: int = 3) -> AsyncIterator[NetnsCluster]:
    """A zookeeper, `brokers` brokers and the client agent on a fresh namespace LAN, every broker registered.
    Everything is stopped and every namespace deleted on the way out, also when the body fails."""
    cleanup_stale_namespaces()
    nodes = {"zk": ZK_HOST, **{f"b{i}": BROKER_HOST_BASE + i for i in range(1, brokers + 1)}, "cl": CLIENT_HOST}
    lan = NetnsLan.create(nodes)
    zk = NetnsZookeeper(tmp_path / "zk-data", ZK_PORT, tmp_path / "zk.log", lan=lan)
    members: dict[int, ClusterBroker] = {}
    agent: ClientAgent | None = None
    try:
        zk.start()
        for broker_id in range(1, brokers + 1):
            members[broker_id] = NetnsBroker(
                data_dir=tmp_path / f"broker-{broker_id}",
                port=BROKER_BASE_PORT + broker_id,
                log_path=tmp_path / f"broker-{broker_id}.log",
                extra_args=["--replica-lag-time-max-ms", str(LAG_MS), "--replica-fetch-wait-ms", str(FETCH_WAIT_MS)],
                broker_id=broker_id,
                zookeeper=zk.url,
                lan=lan,
                node=f"b{broker_id}",
            )
        # Started together and then awaited: each spends most of its start importing.
        for b in members.values():
            assert isinstance(b, NetnsBroker)
            b.launch()
        for b in members.values():
            b.wait_ready(15.0)
        spec = {
            "zookeeper": {"host": zk.host, "port": zk.port, "data_dir": str(zk.data_dir), "log": str(zk.log_path)},
            "brokers": {
                str(i): {
                    "host": lan.address(f"b{i}"),
                    "port": b.port,
                    "data_dir": str(b.data_dir),
                    "log": str(b.log_path),
                }
                for i, b in members.items()
            },
            "history": str(tmp_path / "history.jsonl"),
        }
        agent = await ClientAgent.start(lan, spec, tmp_path / "agent.log")
        await agent.call("wait_registered", ids=sorted(members))
        yield NetnsCluster(lan, Cluster(zk, members), agent)
    finally:
        if agent is not None:
            with contextlib.suppress(Exception):
                await agent.close()
        for b in members.values():
            if b.alive():
                if b.paused:
                    b.resume()
                b.terminate()
        zk.terminate()
        lan.destroy()


# --------------------------------------------------------------------------------------- the agent, client side


@dataclass
class _RemoteBroker(ClusterBroker):
    """A broker the agent only talks to: its process belongs to the test, in another namespace."""

    def alive(self) -> bool:
        return True


class NetnsClusterClient(ClusterClient):
    """ClusterClient over the LAN: the same request, sent to the address of the node that owns the port."""

    def __init__(self, cluster: Cluster, context: Any, hosts: dict[int, str]) -> None:
        super().__init__(cluster, context)
        self.hosts = hosts

    async def request(self, port: int, method: Any, path: str, body: Any = None, *, timeout: float = 5.0) -> Reply:
        where = f"{self.hosts[port]}:{port}"
        message = Message(code=method, uri=f"coap+tcp://{where}{path}")
        if body is not None:
            message.payload = cbor2.dumps(body)
            message.opt.content_format = CT_CBOR
        pending = self.context.request(message, handle_blockwise=False)
        try:
            async with asyncio.timeout(timeout):
                response = await pending.response
        except TimeoutError:
            pending.response.cancel()
            raise PikafkaError(ErrorCode.REQUEST_TIMED_OUT, f"{where} did not answer {path}") from None
        except Exception as exc:
            raise PikafkaError(ErrorCode.BROKER_NOT_AVAILABLE, f"{where}: {exc!r}") from None
        return Reply(response.code, response.payload)


class Agent:
    """The RPC handlers. Every answer is JSON; values are ASCII text (the tests make them so)."""

    OPS = frozenset(
        {
            "ping",
            "wait_registered",
            "create_topic",
            "leader_of",
            "isr_of",
            "describe",
            "wait_in_sync",
            "start_producer",
            "acked",
            "stop_producer",
            "stale_writes",
            "visible_on",
            "read_partition",
        }
    )

    def __init__(self, client: NetnsClusterClient, history_path: Path) -> None:
        self.client = client
        self.history = open(history_path, "a")  # noqa: SIM115 - open for the agent's lifetime
        self.producers: dict[str, tuple[RetryingProducer, asyncio.Event, asyncio.Task[None]]] = {}

    def record(self, entry: dict[str, Any]) -> None:
        # One line per event, flushed at once: a crashed agent still leaves the history up to that point.
        self.history.write(json.dumps(entry) + "\n")
        self.history.flush()

    async def ping(self) -> str:
        return "pong"

    async def wait_registered(self, ids: list[int]) -> None:
        await self.client.wait_for(lambda: self.client.live_brokers_are(set(ids)), f"brokers {ids} registered")

    async def create_topic(self, name: str, **kwargs: Any) -> None:
        await self.client.create_topic(name, **kwargs)

    async def leader_of(self, topic: str, partition: int = 0) -> int | None:
        return await self.client.leader_of(topic, partition)

    async def isr_of(self, topic: str, partition: int = 0) -> list[int]:
        return await self.client.isr_of(topic, partition)

    async def describe(self, broker: int, topic: str, partition: int = 0) -> dict[str, Any] | None:
        described = await self.client.describe(broker, topic)
        return None if described is None else dict(described["partitions"][partition])

    async def wait_in_sync(self, topic: str, replicas: list[int], partition: int = 0) -> None:
        await self.client.wait_in_sync(topic, replicas, partition)

    async def start_producer(self, topic: str, name: str, partition: int = 0) -> None:
        producer = RetryingProducer(self.client, topic, name, producer_id_for(f"{topic}-{name}"), partition=partition)
        stop = asyncio.Event()

        async def run() -> None:
            while not stop.is_set():
                ack = await producer.send_one()
                self.record(
                    {
                        "kind": "ack",
                        "writer": name,
                        "sequence": producer.sequence - 1,
                        "value": ack.value.decode(),
                        "partition": ack.partition,
                        "offset": ack.offset,
                    }
                )

        self.producers[name] = (producer, stop, asyncio.create_task(run()))

    async def acked(self, name: str) -> int:
        producer, _, task = self.producers[name]
        failure = task.exception() if task.done() else None
        if failure is not None:
            raise failure  # e.g. a batch not acknowledged within DEADLINE_S: the test must hear of it
        return len(producer.acks)

    async def stop_producer(self, name: str) -> int:
        producer, stop, task = self.producers[name]
        stop.set()
        await task  # the batch in flight is acknowledged (or fails the call) before the producer stops
        return len(producer.acks)

    async def stale_writes(self, broker: int, topic: str, values: list[str], timeout_ms: int) -> list[dict[str, Any]]:
        """acks=all writes sent straight to `broker`, concurrently, without a producer id (so a refused one leaves no
        sequence gap anywhere). Each answer is recorded; `acknowledged` true would be a fenced leader's lie."""
        port = self.client.cluster.broker(broker).port

        async def one(value: str) -> dict[str, Any]:
            body = {
                "acks": -1,
                "timeout_ms": timeout_ms,
                "batches": [{"topic": topic, "partition": 0, "records": encode_batch([Record(value=value.encode())])}],
            }
            try:
                reply = await self.client.request(port, Code.POST, "/produce", body, timeout=timeout_ms / 1000 + 2)
            except PikafkaError as exc:
                return {"kind": "stale", "value": value, "acknowledged": False, "answer": str(exc)}
            answer = str(reply.body) if reply.ok else str(reply.error())
            return {"kind": "stale", "value": value, "acknowledged": reply.ok, "answer": answer}

        results = await asyncio.gather(*(one(v) for v in values))
        for r in results:
            self.record(r)
        return list(results)

    async def visible_on(self, broker: int, topic: str, partition: int = 0) -> list[str]:
        """What a consumer fetching from `broker` (whatever it believes about leadership) can read: every record
        below that broker's own high watermark."""
        port = self.client.cluster.broker(broker).port
        values: list[str] = []
        offset = 0
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            body = {"partitions": [{"topic": topic, "partition": partition, "offset": offset}], "max_bytes": 1 << 20}
            reply = await self.client.request(port, Code.FETCH, "/fetch", body)
            if not reply.ok:
                raise reply.error()
            entry = reply.body["partitions"][0]
            for _, batch in iter_batches(entry["records"]):
                for rec in decode_records(batch):
                    if rec.offset >= offset:
                        assert rec.value is not None
                        values.append(rec.value.decode())
                        offset = rec.offset + 1
            if offset >= entry["high_watermark"]:
                return values
        raise AssertionError(f"could not read {topic}-{partition} from broker {broker} up to its high watermark")

    async def read_partition(self, topic: str, partition: int = 0) -> int:
        consumed = await self.client.read_partition(topic, partition)
        for c in consumed:
            self.record({"kind": "consumed", "value": c.value.decode(), "partition": c.partition, "offset": c.offset})
        return len(consumed)

    async def close(self) -> None:
        for _, stop, task in self.producers.values():
            stop.set()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.history.close()


async def _agent_main(spec: dict[str, Any]) -> None:
    zk_spec = spec["zookeeper"]
    zk = ZookeeperProcess(Path(zk_spec["data_dir"]), zk_spec["port"], Path(zk_spec["log"]))
    brokers: dict[int, ClusterBroker] = {
        int(i): _RemoteBroker(data_dir=Path(b["data_dir"]), port=b["port"], log_path=Path(b["log"]), broker_id=int(i))
        for i, b in spec["brokers"].items()
    }
    hosts = {zk_spec["port"]: zk_spec["host"], **{b["port"]: b["host"] for b in spec["brokers"].values()}}
    cluster = Cluster(zk, brokers)
    client = NetnsClusterClient(cluster, await Context.create_client_context(), hosts)
    cluster.client = client
    agent = Agent(client, Path(spec["history"]))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout
    try:
        while line := await reader.readline():
            request = json.loads(line)
            try:
                if request["op"] not in Agent.OPS:
                    raise ValueError(f"no such call {request['op']!r}")
                handler = getattr(agent, request["op"])
                answer = {"result": await handler(**request["args"])}
            except Exception as exc:  # the test shows it; the agent stays up for the calls that follow
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        await agent.close()
        with contextlib.suppress(Exception):
            await client.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "agent":
        print("usage: python -m tests.netns_cluster agent SPEC_JSON", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(_agent_main(json.loads(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
