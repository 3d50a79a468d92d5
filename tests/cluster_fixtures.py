"""A real cluster on loopback for the replication tests: one `pi_zookeeper.service` process and N `pi_broker.service`
processes, each on free ports with its own data directory, all stopped at teardown (paused ones are resumed first).

Also here, because every replication test needs them: a raw aiocoap client (`ClusterClient`) that finds leaders in
/metadata, a producer that retries one batch with the same producer id and sequence against whoever leads now
(`RetryingProducer`), and helpers that read a partition back and wait for conditions with generous deadlines.
Nothing is mocked and no assertion is timed: tests wait for states, not for durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
from pikafka.records import CorruptBatchError, Record, decode_records, encode_batch, iter_batches
from tests.conftest import REPO, BrokerProcess
from tests.history_checker import Ack, Consumed
from tests.ports import free_port
from tests.processes import stop_gracefully, wait_for_port

HEARTBEAT_MS = 200
SESSION_MS = 1500
LAG_MS = 1000
FETCH_WAIT_MS = 200
DEADLINE_S = 30.0  # generous: a wait that needs this long has found a bug, not a slow machine


@dataclass
class ZookeeperProcess:
    data_dir: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        cmd = [
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
            str(HEARTBEAT_MS),
            "--session-timeout-ms",
            str(SESSION_MS),
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        wait_for_port(self.proc, self.port, self.log_path, "zookeeper", timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.proc is not None:
            stop_gracefully(self.proc, 10)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@dataclass
class ClusterBroker(BrokerProcess):
    paused: bool = False

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def partition_dir(self, topic: str, partition: int = 0) -> Path:
        return self.data_dir / f"{topic}-{partition}"

    def log_bytes(self, topic: str, partition: int = 0) -> bytes:
        """The batches of every segment of a partition, concatenated in offset order (without the zeros a live
        segment file holds past its batches: space reserved for appends, as long as each broker likes)."""
        directory = self.partition_dir(topic, partition)
        return b"".join(_batches_of(p.read_bytes()) for p in sorted(directory.glob("*.log")))


def _batches_of(data: bytes) -> bytes:
    end = 0
    with contextlib.suppress(CorruptBatchError):  # stops at the reserved zeros (or a batch being written right now)
        for header, _ in iter_batches(data):
            end += header.size
    return data[:end]


@dataclass
class Cluster:
    zookeeper: ZookeeperProcess
    brokers: dict[int, ClusterBroker]
    client: ClusterClient = field(init=False)

    def broker(self, broker_id: int) -> ClusterBroker:
        return self.brokers[broker_id]

    def others(self, broker_id: int) -> list[int]:
        return [b for b in self.brokers if b != broker_id]

    def logs(self) -> str:
        """The tail of every process log, for a failing assertion."""
        out = []
        for path in [self.zookeeper.log_path, *(b.log_path for b in self.brokers.values())]:
            with contextlib.suppress(OSError):
                out.append(f"==== {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(out)


@pytest.fixture
async def cluster_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    made: list[Cluster] = []

    async def make(brokers: int = 3, extra_args: list[str] | None = None) -> Cluster:
        zk = ZookeeperProcess(tmp_path / "zk-data", free_port(), tmp_path / "zk.log")
        zk.start()
        members: dict[int, ClusterBroker] = {}
        for broker_id in range(1, brokers + 1):
            b = ClusterBroker(
                data_dir=tmp_path / f"broker-{broker_id}",
                port=free_port(),
                log_path=tmp_path / f"broker-{broker_id}.log",
                extra_args=[
                    "--replica-lag-time-max-ms",
                    str(LAG_MS),
                    "--replica-fetch-wait-ms",
                    str(FETCH_WAIT_MS),
                    *(extra_args or []),
                ],
                broker_id=broker_id,
                zookeeper=zk.url,
            )
            members[broker_id] = b
        cluster = Cluster(zk, members)
        made.append(cluster)
        for b in members.values():
            b.start()
        cluster.client = await ClusterClient.open(cluster)
        await cluster.client.wait_for(
            lambda: cluster.client.live_brokers_are(set(members)), "every broker registered", timeout=DEADLINE_S
        )
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            with contextlib.suppress(Exception):
                await cluster.client.close()
            for b in cluster.brokers.values():
                if b.alive():
                    if b.paused:
                        b.resume()
                    b.terminate()
            cluster.zookeeper.terminate()


# --------------------------------------------------------------------------------------------------- raw client


@dataclass
class Reply:
    code: Any
    payload: bytes

    @property
    def ok(self) -> bool:
        return bool(self.code.is_successful())

    @property
    def body(self) -> Any:
        return cbor2.loads(self.payload) if self.payload else None

    def error(self) -> PikafkaError:
        return PikafkaError.from_payload(int(self.code), self.payload)


class ClusterClient:
    def __init__(self, cluster: Cluster, context: Any) -> None:
        self.cluster = cluster
        self.context = context

    @classmethod
    async def open(cls, cluster: Cluster) -> ClusterClient:
        return cls(cluster, await Context.create_client_context())

    async def close(self) -> None:
        await self.context.shutdown()

    async def request(self, port: int, method: Any, path: str, body: Any = None, *, timeout: float = 5.0) -> Reply:
        """One request over CoAP over TCP; PikafkaError(BROKER_NOT_AVAILABLE) when the peer cannot be reached."""
        message = Message(code=method, uri=f"coap+tcp://127.0.0.1:{port}{path}")
        if body is not None:
            message.payload = cbor2.dumps(body)
            message.opt.content_format = CT_CBOR
        pending = self.context.request(message, handle_blockwise=False)
        try:
            async with asyncio.timeout(timeout):
                response = await pending.response
        except TimeoutError:
            pending.response.cancel()
            raise PikafkaError(ErrorCode.REQUEST_TIMED_OUT, f"port {port} did not answer {path}") from None
        except Exception as exc:
            raise PikafkaError(ErrorCode.BROKER_NOT_AVAILABLE, f"port {port}: {exc!r}") from None
        return Reply(response.code, response.payload)

    async def zk_metadata(self) -> dict[str, Any]:
        reply = await self.request(self.cluster.zookeeper.port, Code.GET, "/metadata")
        assert reply.ok, reply
        body: dict[str, Any] = reply.body
        return body

    async def live_brokers_are(self, ids: set[int]) -> bool:
        try:
            meta = await self.zk_metadata()
        except PikafkaError:
            return False
        return {b["id"] for b in meta["brokers"] if b["alive"]} == ids

    async def any_metadata(self) -> dict[str, Any]:
        """The zookeeper's metadata, or (while it is down) the newest any live broker serves."""
        try:
            return await self.zk_metadata()
        except (PikafkaError, AssertionError):
            pass
        best: dict[str, Any] | None = None
        for b in self.cluster.brokers.values():
            if not b.alive() or b.paused:
                continue
            with contextlib.suppress(PikafkaError):
                reply = await self.request(b.port, Code.GET, "/metadata", timeout=1.0)
                if reply.ok and (best is None or reply.body["metadata_version"] > best["metadata_version"]):
                    best = reply.body
        if best is None:
            raise PikafkaError(ErrorCode.BROKER_NOT_AVAILABLE, "no metadata anywhere")
        return best

    async def partition_state(self, topic: str, partition: int = 0) -> dict[str, Any] | None:
        meta = await self.any_metadata()
        for t in meta["topics"]:
            if t["name"] == topic:
                return dict(t["partitions"][partition])
        return None

    async def leader_of(self, topic: str, partition: int = 0) -> int | None:
        state = await self.partition_state(topic, partition)
        return None if state is None else state["leader"]

    async def isr_of(self, topic: str, partition: int = 0) -> list[int]:
        state = await self.partition_state(topic, partition)
        return [] if state is None else list(state["isr"])

    async def create_topic(self, name: str, *, via: int | None = None, partitions: int = 1, rf: int = 3, **config: int):
        port = self.cluster.zookeeper.port if via is None else self.cluster.broker(via).port
        body = {"name": name, "partitions": partitions, "replication_factor": rf, "config": config}
        reply = await self.request(port, Code.POST, "/topics", body)
        assert reply.code == Code.CREATED, (reply.code, reply.payload)

        async def every_replica_leads_or_follows() -> bool:
            meta = await self.zk_metadata()
            (topic,) = [t for t in meta["topics"] if t["name"] == name]
            for broker_id in self.cluster.brokers:
                mine = [p["partition"] for p in topic["partitions"] if broker_id in p["replicas"]]
                if not mine:
                    continue
                described = await self.describe(broker_id, name)
                if described is None or any(described["partitions"][i]["role"] == "none" for i in mine):
                    return False
            return True

        await self.wait_for(every_replica_leads_or_follows, f"topic {name} on every broker")

    async def describe(self, broker_id: int, topic: str) -> dict[str, Any] | None:
        try:
            reply = await self.request(self.cluster.broker(broker_id).port, Code.GET, f"/topics/{topic}")
        except PikafkaError:
            return None
        return reply.body if reply.ok else None

    async def log_end(self, broker_id: int, topic: str, partition: int = 0) -> int | None:
        described = await self.describe(broker_id, topic)
        return None if described is None else int(described["partitions"][partition]["log_end_offset"])

    async def wait_for(self, condition: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(PikafkaError):
                if await condition():
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"gave up waiting for: {what}\n{self.cluster.logs()}")

    async def read_partition(self, topic: str, partition: int = 0) -> list[Consumed]:
        """Every committed record of the partition, read from its current leader like a consumer."""
        out: list[Consumed] = []
        offset = 0
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            leader = await self.leader_of(topic, partition)
            if leader is None or not self.cluster.broker(leader).alive():
                await asyncio.sleep(0.05)
                continue
            body = {"partitions": [{"topic": topic, "partition": partition, "offset": offset}], "max_bytes": 1 << 20}
            try:
                reply = await self.request(self.cluster.broker(leader).port, Code.FETCH, "/fetch", body)
            except PikafkaError:
                await asyncio.sleep(0.05)
                continue
            if not reply.ok:
                await asyncio.sleep(0.05)
                continue
            entry = reply.body["partitions"][0]
            for _, batch in iter_batches(entry["records"]):
                for record in decode_records(batch):
                    if record.offset >= offset:
                        assert record.value is not None
                        out.append(Consumed(record.value, partition, record.offset))
                        offset = record.offset + 1
            if offset >= entry["high_watermark"]:
                return out
        raise AssertionError(f"could not read {topic}-{partition} to its end\n{self.cluster.logs()}")

    async def wait_in_sync(self, topic: str, replicas: list[int], partition: int = 0) -> None:
        """Until every listed replica is in the ISR and all their logs end at the same offset as the leader's
        high watermark (nothing uncommitted left anywhere)."""

        async def settled() -> bool:
            state = await self.partition_state(topic, partition)
            if state is None or state["leader"] is None or sorted(state["isr"]) != sorted(replicas):
                return False
            leader = await self.describe(state["leader"], topic)
            if leader is None:
                return False
            hw = leader["partitions"][partition]["high_watermark"]
            ends = [await self.log_end(r, topic, partition) for r in replicas]
            return all(e == hw for e in ends)

        await self.wait_for(settled, f"{topic}-{partition} settled with isr {replicas}")


# ---------------------------------------------------------------------------------------------------- producer


@dataclass
class RetryingProducer:
    """Writes unique values one batch at a time with acks=all, as an idempotent producer: a failed batch is retried
    with the same producer id and sequence against whoever leads now, so a retry the old leader had already
    replicated is recognised instead of written twice."""

    client: ClusterClient
    topic: str
    name: str
    producer_id: int
    partition: int = 0
    timeout_ms: int = 2000
    acks: list[Ack] = field(default_factory=list)
    order: dict[bytes, tuple[str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    sequence: int = 0

    async def send_one(self, give_up_after: float = DEADLINE_S) -> Ack:
        value = f"{self.name}-{self.sequence:06d}".encode()
        batch = encode_batch(
            [Record(value=value)], producer_id=self.producer_id, producer_epoch=0, base_sequence=self.sequence
        )
        body = {
            "acks": -1,
            "timeout_ms": self.timeout_ms,
            "batches": [{"topic": self.topic, "partition": self.partition, "records": batch}],
        }
        deadline = time.monotonic() + give_up_after
        while time.monotonic() < deadline:
            try:
                leader = await self.client.leader_of(self.topic, self.partition)
            except PikafkaError as exc:
                self.errors.append(f"metadata: {exc}")
                await asyncio.sleep(0.05)
                continue
            if leader is None:
                await asyncio.sleep(0.05)
                continue
            port = self.client.cluster.broker(leader).port
            try:
                reply = await self.client.request(port, Code.POST, "/produce", body, timeout=self.timeout_ms / 1000 + 2)
            except PikafkaError as exc:
                self.errors.append(str(exc))
                await asyncio.sleep(0.05)
                continue
            if reply.ok:
                result = reply.body["results"][0]
                ack = Ack(value, self.partition, int(result["base_offset"]))
                self.acks.append(ack)
                self.order[value] = (self.name, self.sequence)
                self.sequence += 1
                return ack
            error = reply.error()
            self.errors.append(str(error))
            assert error.retriable, f"{self.name}: non-retriable answer {error}"
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"{self.name}: batch {self.sequence} not acknowledged in {give_up_after}s: {self.errors[-5:]}"
        )

    async def run(self, stop: asyncio.Event, pause_s: float = 0.0) -> None:
        while not stop.is_set():
            await self.send_one()
            if pause_s:
                await asyncio.sleep(pause_s)


def producer_id_for(name: str) -> int:
    return (os.getpid() << 16 | (hash(name) & 0xFFFF)) & ((1 << 62) - 1)
