"""ClusterLink: this broker's session with the zookeeper.

- Registers at start, retrying with backoff while the zookeeper is unreachable; a broker keeps serving the partitions
  it leads meanwhile (and leads nothing before its first snapshot).
- Heartbeats every `heartbeat_interval_ms` (the zookeeper says how often) with each local partition's log end and
  leader epoch, from a task of its own so nothing else ever waits on it. The answer carries the current snapshot when
  ours is older, which heals a lost push. UNKNOWN_BROKER (the session expired, or the zookeeper lost it) means
  register again.
- Applies snapshots, pushed to /cluster/metadata or returned by register and heartbeat, through ReplicaRoles.
- Carries the leader's ISR changes and the topic admin requests a clustered broker forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiocoap.numbers.codes import Code

from pi_broker.config import parse_coap_address
from pi_broker.peer_client import PeerClient
from pikafka.background_task import cancel_and_wait
from pikafka.errors import ErrorCode, PikafkaError

if TYPE_CHECKING:
    from pi_broker.broker import Broker
    from pi_broker.replica_roles import ReplicaRoles

log = logging.getLogger(__name__)

_REGISTER_BACKOFF_S = (0.1, 2.0)  # first and largest pause between registration attempts
_ADMIN_TIMEOUT_S = 5.0
_CONVERGE_WAIT_S = 3.0  # how long a forwarded create/delete waits for the local snapshot to show it


class ClusterLink:
    def __init__(self, broker: Broker, roles: ReplicaRoles, peer: PeerClient, zookeeper: str) -> None:
        self.broker = broker
        self.roles = roles
        self.peer = peer
        self.zk_host, self.zk_port = parse_coap_address(zookeeper)
        # New per process start: the zookeeper tells a restart (which may have lost unflushed data) from a broker
        # that merely missed heartbeats.
        self.incarnation = secrets.token_hex(8)
        self.heartbeat_interval_s = 0.5
        self.session_timeout_s = 2.0
        self.registered = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._zookeeper_unreachable = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-link")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def refresh_metadata_soon(self) -> None:
        """Heartbeat now rather than at the next interval: the answer brings a newer snapshot if there is one."""
        self._wake.set()

    async def receive_snapshot(self, raw: object) -> None:
        """A snapshot pushed by the zookeeper (POST /cluster/metadata)."""
        await self.roles.apply(raw)

    # ---- requests to the zookeeper ----

    async def _zk(self, method: Code, path: str, body: Any | None, timeout_s: float) -> Any:
        return await self.peer.request(self.zk_host, self.zk_port, method, path, body, timeout_s=timeout_s)

    async def alter_isr(self, topic: str, partition: int, leader_epoch: int, isr: list[int]) -> dict[str, Any]:
        body = {
            "topic": topic,
            "partition": partition,
            "leader_id": self.broker.config.broker_id,
            "leader_epoch": leader_epoch,
            "isr": isr,
        }
        answer = await self._zk(Code.POST, "/zk/isr", body, max(1.0, self.session_timeout_s / 2))
        if not isinstance(answer, dict):
            raise PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, "the zookeeper answered an ISR change with no map")
        return answer

    async def create_topic(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self._zk(Code.POST, "/topics", body, _ADMIN_TIMEOUT_S)
        name = answer.get("name") if isinstance(answer, dict) else None
        # Answer once this broker knows the topic too, so a producer that asks it next is not told it does not exist.
        await self._wait_until(lambda: self._snapshot_has(name))
        return answer if isinstance(answer, dict) else {}

    async def delete_topic(self, name: str) -> None:
        await self._zk(Code.DELETE, f"/topics/{name}", None, _ADMIN_TIMEOUT_S)
        await self._wait_until(lambda: not self._snapshot_has(name))

    def _snapshot_has(self, name: object) -> bool:
        snapshot = self.broker.snapshot
        return snapshot is not None and isinstance(name, str) and name in snapshot.topics

    async def _wait_until(self, condition: Any) -> None:
        deadline = time.monotonic() + _CONVERGE_WAIT_S
        polls = 0
        while not condition() and time.monotonic() < deadline:
            if polls % 10 == 0:
                self.refresh_metadata_soon()  # the push normally comes first; this covers a lost one
            polls += 1
            await asyncio.sleep(0.02)

    # ---- the session ----

    async def _run(self) -> None:
        while True:
            await self._register()
            await self._heartbeat_until_unknown()

    async def _register(self) -> None:
        config = self.broker.config
        backoff = _REGISTER_BACKOFF_S[0]
        while True:
            body = {
                "broker_id": config.broker_id,
                "host": self.broker.advertised_host,
                "port": config.port,
                "rack": config.rack,
                "incarnation": self.incarnation,
                "cluster_id": self.broker.cluster_id,
            }
            try:
                answer = await self._zk(Code.POST, "/zk/register", body, 2.0)
                self.heartbeat_interval_s = int(answer["heartbeat_interval_ms"]) / 1000
                self.session_timeout_s = int(answer["session_timeout_ms"]) / 1000
                self.broker.adopt_cluster_id(str(answer["cluster_id"]))
                await self.roles.apply(answer["metadata"])
            except PikafkaError as exc:
                level = logging.ERROR if exc.code is ErrorCode.CLUSTER_ID_MISMATCH else logging.WARNING
                if not self._zookeeper_unreachable or level == logging.ERROR:
                    log.log(level, "cannot register with the zookeeper at %s:%d: %s", self.zk_host, self.zk_port, exc)
                self._zookeeper_unreachable = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _REGISTER_BACKOFF_S[1])
                continue
            except (KeyError, TypeError, ValueError) as exc:
                log.error("the zookeeper's registration answer is malformed: %s", exc)
                await asyncio.sleep(_REGISTER_BACKOFF_S[1])
                continue
            self.registered = True
            self._zookeeper_unreachable = False
            log.info(
                "registered with the zookeeper at %s:%d as broker %d (incarnation %s), metadata version %d",
                self.zk_host,
                self.zk_port,
                config.broker_id,
                self.incarnation,
                self.roles.applied_version,
            )
            return

    async def _heartbeat_until_unknown(self) -> None:
        while True:
            started = time.monotonic()
            try:
                answer = await self._zk(Code.POST, "/zk/heartbeat", self._heartbeat_body(), self.session_timeout_s / 2)
                if self._zookeeper_unreachable:
                    log.info("the zookeeper answers again")
                    self._zookeeper_unreachable = False
                if isinstance(answer, dict) and answer.get("metadata") is not None:
                    await self.roles.apply(answer["metadata"])
            except PikafkaError as exc:
                if exc.code is ErrorCode.UNKNOWN_BROKER:
                    log.warning("the zookeeper has no session for this broker (%s); registering again", exc.reason)
                    self.registered = False
                    return
                if not self._zookeeper_unreachable:
                    # Keep serving what we lead; the zookeeper's return is handled by the next heartbeat.
                    log.warning("heartbeat failed: %s", exc)
                    self._zookeeper_unreachable = True
            except Exception:
                log.exception("heartbeat failed")
            remaining = self.heartbeat_interval_s - (time.monotonic() - started)
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):  # not wait_for: it can swallow a cancel on 3.11
                        await self._wake.wait()
            self._wake.clear()

    def _heartbeat_body(self) -> dict[str, Any]:
        reports = []
        for partition in self.broker.partitions():
            if partition.closed:
                continue
            durable_end = min(partition.log.flushed_offset, partition.log.log_end_offset)
            reports.append(
                {
                    "topic": partition.key.topic,
                    "partition": partition.key.partition,
                    "log_end_offset": durable_end,
                    "leader_epoch": partition.leader_epoch,
                }
            )
        return {
            "broker_id": self.broker.config.broker_id,
            "incarnation": self.incarnation,
            "metadata_version": self.roles.applied_version,
            "partitions": reports,
        }
