"""/groups (GET: the groups this broker coordinates) and /groups/{g}[/{operation}]: consumer groups, CBOR (JSON too
for the administrative GETs). Every operation is documented in docs/protocol.md ("Consumer groups") and
docs/groups.md; the work is done by pi_broker.group.coordinator.GroupCoordinator.
"""

from __future__ import annotations

from typing import Any

from aiocoap import Code, resource
from aiocoap.util.linkformat import LinkFormat

from pi_broker.broker import Broker
from pi_broker.group.coordinator import GroupCoordinator, check_group_id
from pi_broker.messages import get_int, get_list, get_text, require_map
from pi_broker.resources.base import BrokerResource, RequestLimits, decode_body, encode_body, uri_path
from pikafka.errors import ErrorCode, PikafkaError

_MAX_SESSION_TIMEOUT_MS = 300_000
_MAX_METADATA = 1024


def _bad(reason: str) -> PikafkaError:
    return PikafkaError(ErrorCode.INVALID_REQUEST, reason)


def _texts(fields: dict[str, Any], key: str) -> list[str]:
    values = get_list(fields, key)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise _bad(f"field {key!r} must be a non-empty array of non-empty text strings")
    return [str(v) for v in values]


def _bounded(fields: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = get_int(fields, key, default)
    if not low <= value <= high:
        raise _bad(f"field {key!r} must be between {low} and {high}")
    return value


def _offset_entries(fields: dict[str, Any], *, nullable: bool) -> list[tuple[str, int, int | None, str]]:
    raw = get_list(fields, "offsets")
    if not raw:
        raise _bad("offsets is empty")
    entries: list[tuple[str, int, int | None, str]] = []
    seen: set[tuple[str, int]] = set()
    for i, item in enumerate(raw):
        where = f"offsets[{i}]: "
        entry = require_map(item, f"offsets[{i}]")
        topic = get_text(entry, "topic", where=where)
        partition = get_int(entry, "partition", where=where)
        offset: int | None
        if nullable and entry.get("offset", 0) is None:
            offset = None
        else:
            offset = get_int(entry, "offset", where=where)
            if offset < 0:
                raise _bad(f"{where}offset must not be negative")
        if partition < 0:
            raise _bad(f"{where}partition must not be negative")
        metadata = entry.get("metadata", "")
        if not isinstance(metadata, str) or len(metadata) > _MAX_METADATA:
            raise _bad(f"{where}metadata must be a text string of at most {_MAX_METADATA} characters")
        if (topic, partition) in seen:
            raise _bad(f"{where}{topic}-{partition} is named twice")
        seen.add((topic, partition))
        entries.append((topic, partition, offset, metadata))
    return entries


class GroupsResource(BrokerResource):
    def __init__(self, broker: Broker, limits: RequestLimits, coordinator: GroupCoordinator) -> None:
        super().__init__(broker, limits)
        self.coordinator = coordinator

    async def handle_get(self, request: Any) -> Any:
        return encode_body(request, {"groups": self.coordinator.list_groups()}, allow_json=True)


class GroupResource(BrokerResource, resource.PathCapable):  # type: ignore[misc]
    """/groups/{g} and /groups/{g}/{operation}: sees the request with /groups stripped."""

    _POST_OPERATIONS = ("find-coordinator", "join", "heartbeat", "leave", "commit", "reset")

    def __init__(self, broker: Broker, limits: RequestLimits, coordinator: GroupCoordinator) -> None:
        super().__init__(broker, limits)
        self.coordinator = coordinator

    def _target(self, request: Any) -> tuple[str, str | None]:
        path = list(request.opt.uri_path)
        if len(path) not in (1, 2) or not path[0]:
            raise PikafkaError(ErrorCode.NOT_FOUND, f"no resource at {uri_path(request)[:120]}")
        group = check_group_id(path[0])
        operation = path[1] if len(path) == 2 else None
        if operation is not None and operation not in (*self._POST_OPERATIONS, "offsets"):
            raise PikafkaError(
                ErrorCode.NOT_FOUND,
                f"no group operation {operation[:40]!r}; use {', '.join((*self._POST_OPERATIONS, 'offsets'))}",
            )
        return group, operation

    async def handle_get(self, request: Any) -> Any:
        group, operation = self._target(request)
        if operation is None:
            return encode_body(request, await self.coordinator.describe(group), allow_json=True)
        if operation != "offsets":
            raise PikafkaError(ErrorCode.METHOD_NOT_ALLOWED, f"GET is not allowed on {uri_path(request)}; use POST")
        topics = {str(q)[6:] for q in request.opt.uri_query if str(q).startswith("topic=")} or None
        offsets = await self.coordinator.committed(group, topics)
        return encode_body(request, {"group": group, "offsets": offsets}, allow_json=True)

    async def handle_post(self, request: Any) -> Any:
        group, operation = self._target(request)
        if operation is None or operation == "offsets":
            raise PikafkaError(ErrorCode.METHOD_NOT_ALLOWED, f"POST is not allowed on {uri_path(request)}; use GET")
        # find-coordinator needs no body (so `coap-client -m post` works without one).
        empty = not request.payload and operation == "find-coordinator"
        fields = require_map({} if empty else decode_body(request, allow_json=True))
        answer: dict[str, Any]
        if operation == "find-coordinator":
            answer = await self.coordinator.find_coordinator(group)
        elif operation == "join":
            answer = await self._join(group, fields)
        elif operation == "heartbeat":
            await self.coordinator.heartbeat(group, get_text(fields, "member_id"), get_int(fields, "generation"))
            answer = {}
        elif operation == "leave":
            await self.coordinator.leave(group, get_text(fields, "member_id"))
            answer = {}
        elif operation == "commit":
            entries = _offset_entries(fields, nullable=False)
            offsets = [(t, p, o, m) for t, p, o, m in entries if o is not None]
            await self.coordinator.commit(group, get_text(fields, "member_id"), get_int(fields, "generation"), offsets)
            answer = {"committed": len(offsets)}
        else:
            entries = _offset_entries(fields, nullable=True)
            await self.coordinator.reset(group, [(t, p, o) for t, p, o, _ in entries])
            answer = {"reset": len(entries)}
        return encode_body(request, answer, allow_json=True, code=Code.CHANGED)

    async def _join(self, group: str, fields: dict[str, Any]) -> dict[str, Any]:
        member_id = fields.get("member_id", "")
        if not isinstance(member_id, str) or len(member_id) > 255:
            raise _bad("field 'member_id' must be a text string of at most 255 characters")
        client_id = fields.get("client_id", "")
        if not isinstance(client_id, str) or len(client_id) > 255:
            raise _bad("field 'client_id' must be a text string of at most 255 characters")
        topics = _texts(fields, "topics")
        strategies = _texts(fields, "strategies") if "strategies" in fields else ["range"]
        session_ms = _bounded(fields, "session_timeout_ms", 3000, 100, _MAX_SESSION_TIMEOUT_MS)
        rebalance_ms = _bounded(fields, "rebalance_timeout_ms", 10_000, 0, _MAX_SESSION_TIMEOUT_MS)
        result = await self.coordinator.join(
            group, member_id, client_id, topics, strategies, session_ms / 1000, rebalance_ms / 1000
        )
        return {
            "member_id": result.member_id,
            "generation": result.generation,
            "strategy": result.strategy,
            "assignment": [{"topic": t, "partition": p} for t, p in result.assignment],
            "members": result.members,
        }

    def get_resources_as_linkheader(self) -> Any:
        return LinkFormat([])
