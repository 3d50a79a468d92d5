"""Topic administration and cluster metadata: create, list, describe and delete topics."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiocoap.numbers.codes import Code

from clients.start_stop import StartStopContext
from clients.transport import (
    BrokerAddress,
    BrokerUnreachableError,
    CoapTransport,
    parse_bootstrap,
    request_first_reachable,
)
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import DEFAULT_PORT, INTERNAL_PREFIX, check_topic_name

DEFAULT_BOOTSTRAP = f"coap://127.0.0.1:{DEFAULT_PORT}"


class Admin(StartStopContext):
    """Answers come back as the broker sent them (see docs/protocol.md for their fields).

    Use as `async with Admin(url) as admin:`, or call methods directly and `await admin.close()` at the end."""

    def __init__(self, bootstrap: str | Sequence[str] = DEFAULT_BOOTSTRAP, *, request_timeout_ms: int = 10_000) -> None:
        self._brokers = parse_bootstrap(bootstrap if isinstance(bootstrap, str) else list(bootstrap))
        self._timeout_s = request_timeout_ms / 1000
        self._transport = CoapTransport()

    async def start(self) -> None:
        await self._transport.open()

    async def close(self) -> None:
        await self._transport.close()

    async def stop(self) -> None:
        """close(), under the name `async with` (StartStopContext) calls at the end."""
        await self.close()

    async def _request(self, method: Code, path: str, body: Any = None) -> Any:
        if not self._transport.is_open:
            # Admin calls are occasional one-offs: connect on first use, so `async with` is optional (close() still
            # releases the shared connection).
            await self._transport.open()
        response = await request_first_reachable(
            self._transport, self._brokers, method, path, body=body, timeout_s=self._timeout_s
        )
        try:
            return response.cbor()
        except ValueError as exc:
            raise PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, f"undecodable answer from {path}: {exc}") from exc

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = 1,
        config: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        check_topic_name(name)
        body = {
            "name": name,
            "partitions": partitions,
            "replication_factor": replication_factor,
            "config": dict(config or {}),
        }
        answer = await self._request(Code.POST, "/topics", body)
        return dict(answer) if isinstance(answer, Mapping) else {"name": name, "partitions": partitions}

    async def list_topics(self, *, internal: bool = False) -> list[str]:
        """Topic names; the internal ones (`__consumer_offsets`) only with `internal`."""
        answer = await self._request(Code.GET, "/topics?internal=1" if internal else "/topics")
        names = [str(name) for name in answer["topics"]]
        return names if internal else [n for n in names if not n.startswith(INTERNAL_PREFIX)]

    async def describe_topic(self, name: str) -> dict[str, Any]:
        check_topic_name(name, internal=True)
        return dict(await self._request(Code.GET, f"/topics/{name}"))

    async def delete_topic(self, name: str) -> None:
        check_topic_name(name)
        await self._request(Code.DELETE, f"/topics/{name}")

    async def metadata(self) -> dict[str, Any]:
        return dict(await self._request(Code.GET, "/metadata"))

    # -- consumer groups (docs/groups.md) -------------------------------------------------------------------------

    async def _coordinator(self, group: str) -> BrokerAddress:
        answer = await self._request(Code.POST, f"/groups/{group}/find-coordinator", {})
        host = str(answer["host"])
        return BrokerAddress(self._brokers[0].host if host in ("", "0.0.0.0", "::") else host, int(answer["port"]))

    async def _group_request(self, group: str, method: Code, path: str, body: Any = None) -> Any:
        """A request the group's coordinator must answer: found first, found again when it moved."""
        if not self._transport.is_open:
            await self._transport.open()
        last: PikafkaError | None = None
        for _ in range(20):
            try:
                coordinator = await self._coordinator(group)
                response = await self._transport.request(
                    coordinator, method, f"/groups/{group}{path}", body=body, timeout_s=self._timeout_s
                )
                return response.cbor()
            except PikafkaError as exc:
                if not exc.retriable:
                    raise
                last = exc
                await asyncio.sleep(0.2)
        assert last is not None
        raise last

    async def list_groups(self) -> list[dict[str, Any]]:
        """Every group of the cluster: each broker lists those it coordinates."""
        metadata = await self.metadata()
        brokers = [BrokerAddress(str(b["host"]), int(b["port"])) for b in metadata.get("brokers", [])]
        if len(brokers) <= 1:
            brokers = [self._brokers[0]]  # a single broker: the one we reached, whatever host it advertises
        groups: dict[str, dict[str, Any]] = {}
        for broker in brokers:
            try:
                response = await self._transport.request(
                    broker, Code.GET, "/groups", timeout_s=self._timeout_s, accept_cbor=True
                )
            except BrokerUnreachableError:
                continue
            for entry in response.cbor()["groups"]:
                groups.setdefault(str(entry["group"]), dict(entry))
        return [groups[name] for name in sorted(groups)]

    async def describe_group(self, group: str) -> dict[str, Any]:
        """Members, assignment and committed offsets, plus each committed partition's log end and lag."""
        answer = dict(await self._group_request(group, Code.GET, ""))
        ends = await self.log_ends({str(o["topic"]) for o in answer.get("offsets", [])})
        for member in answer.get("members", []):
            for a in member.get("assignment", []):
                ends.setdefault((str(a["topic"]), int(a["partition"])), -1)
        for entry in answer.get("offsets", []):
            end = ends.get((str(entry["topic"]), int(entry["partition"])))
            entry["log_end_offset"] = end
            entry["lag"] = None if end is None or end < 0 else max(0, end - int(entry["offset"]))
        return answer

    async def group_offsets(self, group: str) -> dict[tuple[str, int], int]:
        answer = await self._group_request(group, Code.GET, "/offsets")
        return {(str(o["topic"]), int(o["partition"])): int(o["offset"]) for o in answer["offsets"]}

    async def log_ends(self, topics: set[str]) -> dict[tuple[str, int], int]:
        """The high watermark of every partition of these topics, from each partition's leader."""
        metadata = await self.metadata()
        brokers = {int(b["id"]): BrokerAddress(str(b["host"]), int(b["port"])) for b in metadata["brokers"]}
        ends: dict[tuple[str, int], int] = {}
        for topic in metadata["topics"]:
            name = str(topic["name"])
            if name not in topics:
                continue
            leaders = {p.get("leader") for p in topic["partitions"]}
            for leader in leaders:
                address = brokers.get(leader) if isinstance(leader, int) else None
                if address is None or len(brokers) == 1:
                    address = self._brokers[0]
                try:
                    response = await self._transport.request(
                        address, Code.GET, f"/topics/{name}", timeout_s=self._timeout_s, accept_cbor=True
                    )
                except PikafkaError:
                    continue
                for p in response.cbor()["partitions"]:
                    if p.get("leader") == leader or len(brokers) == 1:
                        ends[(name, int(p["partition"]))] = int(p["high_watermark"])
        return ends

    async def reset_group(self, group: str, to: str | int, topics: Sequence[str] = ()) -> dict[tuple[str, int], int]:
        """Move a group's committed offsets to "earliest", "latest" or a fixed offset, for the topics it has
        offsets of (or the given ones). Refused with NON_EMPTY_GROUP while the group has live members."""
        current = await self.group_offsets(group)
        names = set(topics) or {topic for topic, _ in current}
        if not names:
            raise PikafkaError(
                ErrorCode.GROUP_ID_NOT_FOUND, f"group {group!r} has no committed offsets; name the topic to reset"
            )
        targets: dict[tuple[str, int], int] = {}
        if to in ("earliest", "latest"):
            for name in sorted(names):
                described = await self.describe_topic(name)
                for p in described["partitions"]:
                    key = (name, int(p["partition"]))
                    targets[key] = int(p["log_start_offset"]) if to == "earliest" else -1
            if to == "latest":
                ends = await self.log_ends(names)
                targets = {key: ends.get(key, 0) for key in targets}
        else:
            offset = int(to)
            for name in sorted(names):
                described = await self.describe_topic(name)
                for p in described["partitions"]:
                    targets[(name, int(p["partition"]))] = offset
        body = {"offsets": [{"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(targets.items())]}
        await self._group_request(group, Code.POST, "/reset", body)
        return targets
