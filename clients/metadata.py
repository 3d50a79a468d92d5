"""Which broker leads each partition, learned from `/metadata` and refreshed when a broker says it is wrong."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiocoap.numbers.codes import Code

from clients.records import TopicPartition
from clients.transport import BrokerAddress, CoapTransport
from pikafka.errors import ErrorCode, PikafkaError

# Errors after which the cached leaders may be wrong: ask again before retrying.
STALE_METADATA_ERRORS = frozenset(
    {
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.BROKER_NOT_AVAILABLE,
        ErrorCode.REQUEST_TIMED_OUT,
    }
)
_UNSPECIFIED_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    leader: int | None
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


# How long to wait for more metadata answers once the first arrived.
_NEWER_ANSWER_GRACE_S = 0.2


class ClusterMetadata:
    """A cache of brokers and partition leaders; a standalone broker is a cluster of one that leads everything."""

    def __init__(self, transport: CoapTransport, bootstrap: Sequence[BrokerAddress], *, timeout_s: float) -> None:
        self._transport = transport
        self._bootstrap = list(bootstrap)
        self._timeout_s = timeout_s
        self.cluster_id: str | None = None
        self.brokers: dict[int, BrokerAddress] = {}
        self.topics: dict[str, list[PartitionInfo]] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self.refresh_count = 0

    def partition_count(self, topic: str) -> int | None:
        parts = self.topics.get(topic)
        return len(parts) if parts is not None else None

    def partitions(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p.partition) for p in self.topics.get(topic, [])]

    def leader(self, tp: TopicPartition) -> BrokerAddress | None:
        """The leader's address, or None when unknown (no such partition, or an election under way)."""
        parts = self.topics.get(tp.topic)
        if parts is None or not 0 <= tp.partition < len(parts):
            return None
        leader = parts[tp.partition].leader
        if leader is None or leader < 0:
            return None
        return self.brokers.get(leader)

    def any_broker(self) -> BrokerAddress:
        """Somewhere to send a request that any broker can answer (admin, metadata)."""
        for addr in self.brokers.values():
            return addr
        return self._bootstrap[0]

    async def refresh(self) -> None:
        """Fetch metadata again. Concurrent callers share one request rather than each sending their own."""
        task = self._refreshing
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._refresh())
            self._refreshing = task
        await asyncio.shield(task)

    async def _refresh(self) -> None:
        # Ask every known broker and the bootstrap list at once and keep the newest answer (highest
        # metadata_version): a leader cut off from the zookeeper still answers, with its stale view naming itself,
        # and asking only the first reachable broker would pin the client on it until the network heals.
        candidates = list(dict.fromkeys([*self.brokers.values(), *self._bootstrap]))
        asks: dict[asyncio.Future[tuple[int, Any]], BrokerAddress] = {
            asyncio.ensure_future(self._ask(addr)): addr for addr in candidates
        }
        answers: list[tuple[int, BrokerAddress, Any]] = []
        errors: list[PikafkaError] = []
        pending: set[asyncio.Future[tuple[int, Any]]] = set(asks)
        try:
            deadline: float | None = None
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break  # the grace period after the first answer is over
                for fut in done:
                    try:
                        version, body = fut.result()
                    except PikafkaError as exc:
                        errors.append(exc)
                        continue
                    answers.append((version, asks[fut], body))
                    if deadline is None:
                        # Others answering within a moment are compared; a dead broker is not waited for.
                        deadline = asyncio.get_running_loop().time() + _NEWER_ANSWER_GRACE_S
        finally:
            for fut in pending:
                fut.cancel()
        if not answers:
            raise errors[0] if errors else PikafkaError(ErrorCode.BROKER_NOT_AVAILABLE, "no broker to ask")
        _, source, body = max(answers, key=lambda answer: answer[0])
        try:
            self._apply(body, source)
        except (ValueError, TypeError, KeyError) as exc:
            raise PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, f"{source}: malformed metadata: {exc}") from exc
        self.refresh_count += 1

    async def _ask(self, addr: BrokerAddress) -> tuple[int, Any]:
        response = await self._transport.request(addr, Code.GET, "/metadata", timeout_s=self._timeout_s)
        try:
            body = response.cbor()
            version = body.get("metadata_version")
            return (int(version) if isinstance(version, int) else -1), body
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, f"{addr}: malformed metadata: {exc}") from exc

    def _apply(self, body: Any, source: BrokerAddress) -> None:
        brokers: dict[int, BrokerAddress] = {}
        for b in body["brokers"]:
            host = str(b["host"])
            # A broker bound to every interface may advertise the wildcard; reach it where we reached the source.
            brokers[int(b["id"])] = BrokerAddress(source.host if host in _UNSPECIFIED_HOSTS else host, int(b["port"]))
        topics: dict[str, list[PartitionInfo]] = {}
        for t in body["topics"]:
            parts = sorted(
                (
                    PartitionInfo(
                        partition=int(p["partition"]),
                        leader=None if p.get("leader") is None else int(p["leader"]),
                        leader_epoch=int(p.get("leader_epoch", 0)),
                        replicas=tuple(int(r) for r in p.get("replicas", ())),
                        isr=tuple(int(r) for r in p.get("isr", ())),
                    )
                    for p in t["partitions"]
                ),
                key=lambda p: p.partition,
            )
            topics[str(t["name"])] = parts
        self.cluster_id = None if body.get("cluster_id") is None else str(body["cluster_id"])
        self.brokers = brokers
        self.topics = topics

    def require_topic(self, topic: str) -> int:
        """Partition count of a topic the last refresh saw, else UNKNOWN_TOPIC_OR_PARTITION."""
        count = self.partition_count(topic)
        if count is None:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} does not exist")
        return count
