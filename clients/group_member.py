"""A consumer's membership in a group: find the coordinator, join, heartbeat, commit, leave (docs/groups.md).

The heartbeat runs in a task of its own so a slow application keeps its membership; it never rejoins by itself.
When the coordinator says the group is rebalancing (or forgot the member, or moved), it only raises the
`rejoin_needed` flag: the consumer rejoins from its next getmany(), after the application had its chance to commit
what it processed (eager rebalancing: the member gives up every partition before it rejoins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiocoap.numbers.codes import Code

from clients.records import TopicPartition
from clients.transport import BrokerAddress, BrokerUnreachableError, CoapTransport, request_first_reachable
from pikafka.background_task import cancel_and_wait
from pikafka.errors import ErrorCode, PikafkaError

log = logging.getLogger(__name__)

# Answers after which the member must join again (its partitions are no longer its own).
REJOIN_ERRORS = frozenset({ErrorCode.REBALANCE_IN_PROGRESS, ErrorCode.ILLEGAL_GENERATION, ErrorCode.UNKNOWN_MEMBER_ID})
# Answers after which the coordinator must be found again.
COORDINATOR_ERRORS = frozenset(
    {
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.BROKER_NOT_AVAILABLE,
        ErrorCode.REQUEST_TIMED_OUT,
    }
)
STRATEGIES = ("range", "roundrobin")


class CommitFailedError(PikafkaError):
    """The commit was refused because the group rebalanced: the partitions may belong to another member now, which
    will read from the last successful commit (so the records since then are delivered again: at least once)."""


@dataclass(frozen=True)
class GroupSettings:
    group_id: str
    session_timeout_ms: int = 3000
    heartbeat_interval_ms: int = 500
    rebalance_timeout_ms: int = 10_000
    strategy: str = "range"
    client_id: str = ""


class GroupMember:
    def __init__(
        self,
        transport: CoapTransport,
        bootstrap: Sequence[BrokerAddress],
        topics: Sequence[str],
        settings: GroupSettings,
        *,
        timeout_s: float,
        backoff_s: float,
        on_rejoin_needed: Callable[[], None] = lambda: None,
    ) -> None:
        if settings.strategy not in STRATEGIES:
            raise ValueError(f"partition_assignment_strategy must be one of {', '.join(STRATEGIES)}")
        self._transport = transport
        self._bootstrap = list(bootstrap)
        self._topics = list(topics)
        self.settings = settings
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self.group_id = settings.group_id
        self.client_id = settings.client_id or f"{socket.gethostname()}-{os.getpid()}"
        self.coordinator: BrokerAddress | None = None
        self.member_id = ""
        self.generation = -1
        self.assignment: list[TopicPartition] = []
        self.rejoin_needed = asyncio.Event()
        self._heartbeats: asyncio.Task[None] | None = None
        self._joining = False
        self._on_rejoin_needed = on_rejoin_needed  # wakes a consumer waiting for records, so it rejoins at once

    # -- the coordinator ---------------------------------------------------------------------------------------

    async def _find_coordinator(self) -> BrokerAddress:
        response = await request_first_reachable(
            self._transport,
            self._bootstrap,
            Code.POST,
            f"/groups/{self.group_id}/find-coordinator",
            body={},
            timeout_s=self._timeout_s,
        )
        answer = response.cbor()
        host = str(answer["host"])
        if host in ("", "0.0.0.0", "::"):
            host = self._bootstrap[0].host
        self.coordinator = BrokerAddress(host, int(answer["port"]))
        return self.coordinator

    async def request(self, operation: str, body: Mapping[str, Any], *, timeout_s: float | None = None) -> Any:
        """One group request to the coordinator (found first when unknown, and again when it moved); retries until
        `timeout_s` on coordinator trouble, raises anything else."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s or self._timeout_s)
        while True:
            try:
                coordinator = self.coordinator or await self._find_coordinator()
                # A join waits for the whole rebalance, so it may take up to the rebalance timeout.
                wait = self._timeout_s + (self.settings.rebalance_timeout_ms / 1000 if operation == "join" else 0)
                response = await self._transport.request(
                    coordinator, Code.POST, f"/groups/{self.group_id}/{operation}", body=dict(body), timeout_s=wait
                )
                return response.cbor()
            except PikafkaError as exc:
                if exc.code not in COORDINATOR_ERRORS and not isinstance(exc, BrokerUnreachableError):
                    raise
                self.coordinator = None
                if loop.time() >= deadline:
                    raise
                log.debug("group %s: %s; finding the coordinator again", self.group_id, exc)
                await asyncio.sleep(self._backoff_s)

    async def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        while True:
            try:
                coordinator = self.coordinator or await self._find_coordinator()
                response = await self._transport.request(
                    coordinator, Code.GET, f"/groups/{self.group_id}/offsets", timeout_s=self._timeout_s
                )
                break
            except PikafkaError as exc:
                if exc.code not in COORDINATOR_ERRORS and not isinstance(exc, BrokerUnreachableError):
                    raise
                self.coordinator = None
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(self._backoff_s)
        stored = {
            TopicPartition(str(o["topic"]), int(o["partition"])): int(o["offset"])
            for o in response.cbor().get("offsets", [])
        }
        return {tp: stored.get(tp) for tp in partitions}

    # -- membership --------------------------------------------------------------------------------------------

    async def join(self) -> list[TopicPartition]:
        """Join (or rejoin) and return this member's partitions for the new generation."""
        self._joining = True
        self.rejoin_needed.clear()
        try:
            while True:
                body = {
                    "member_id": self.member_id,
                    "client_id": self.client_id,
                    "topics": self._topics,
                    "strategies": [self.settings.strategy],
                    "session_timeout_ms": self.settings.session_timeout_ms,
                    "rebalance_timeout_ms": self.settings.rebalance_timeout_ms,
                }
                try:
                    answer = await self.request("join", body, timeout_s=max(self._timeout_s, 30.0))
                except PikafkaError as exc:
                    if exc.code is ErrorCode.UNKNOWN_MEMBER_ID:
                        self.member_id = ""
                        continue
                    raise
                self.member_id = str(answer["member_id"])
                self.generation = int(answer["generation"])
                self.assignment = [TopicPartition(str(a["topic"]), int(a["partition"])) for a in answer["assignment"]]
                log.info(
                    "group %s: member %s generation %d assigned %s",
                    self.group_id,
                    self.member_id,
                    self.generation,
                    sorted(self.assignment),
                )
                return list(self.assignment)
        finally:
            self._joining = False
            self._ensure_heartbeats()

    def _ensure_heartbeats(self) -> None:
        if self._heartbeats is None or self._heartbeats.done():
            self._heartbeats = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            # Keeps beating while a rejoin is pending: the member still owns its partitions until it rejoins, and a
            # silent member would be expired by its session timeout instead of waiting for the rebalance timeout.
            if self._joining or not self.member_id:
                continue
            try:
                await self.request(
                    "heartbeat",
                    {"member_id": self.member_id, "generation": self.generation},
                    timeout_s=self.settings.session_timeout_ms / 1000,
                )
            except PikafkaError as exc:
                if exc.code in REJOIN_ERRORS or exc.code in COORDINATOR_ERRORS or exc.retriable:
                    log.info("group %s: %s; rejoining", self.group_id, exc)
                    self.rejoin_needed.set()
                    self._on_rejoin_needed()
                else:
                    log.warning("group %s: heartbeat failed: %s", self.group_id, exc)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        generation = self.generation
        body = {
            "member_id": self.member_id,
            "generation": generation,
            "offsets": [{"topic": tp.topic, "partition": tp.partition, "offset": o} for tp, o in offsets.items()],
        }
        try:
            await self.request("commit", body)
        except PikafkaError as exc:
            if exc.code in REJOIN_ERRORS:
                if generation == self.generation and not self._joining:
                    self.rejoin_needed.set()
                    self._on_rejoin_needed()
                raise CommitFailedError(exc.code, exc.reason) from None
            raise

    async def leave(self) -> None:
        await cancel_and_wait(self._heartbeats)
        self._heartbeats = None
        if self.member_id:
            with contextlib.suppress(PikafkaError):
                await self.request("leave", {"member_id": self.member_id}, timeout_s=min(self._timeout_s, 3.0))
        self.member_id = ""
