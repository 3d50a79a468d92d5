"""The zookeeper's CoAP resources: decode, check types, call the coordinator, encode. No rules live here.

Like aiocoap's resource directory (aiocoap/cli/rd.py), the state is kept apart from these thin resources. Errors are
rendered as the rest of pikafka does (docs/protocol.md): the error's CoAP code and a one-line `NAME: reason` text
payload; anything unexpected is logged and answered 5.00 UNKNOWN_SERVER_ERROR, and the service stays up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiocoap
import aiocoap.resource as resource
import cbor2
from aiocoap import error as coap_error
from aiocoap.numbers.codes import Code

from pi_zookeeper.coordinator import Coordinator
from pi_zookeeper.state import ClusterState, PartitionReport
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import CT_CBOR, CT_JSON, CT_TEXT

log = logging.getLogger(__name__)

MAX_BROKER_ID = 2**31 - 1
Handler = Callable[[aiocoap.Message], Awaitable[aiocoap.Message]]


def error_message(exc: PikafkaError) -> aiocoap.Message:
    return aiocoap.Message(code=Code(exc.code.coap_code), payload=exc.payload(), content_format=CT_TEXT)


class _PikafkaRenderableError(coap_error.RenderableError):  # type: ignore[misc]  # aiocoap is untyped
    """Carries a PikafkaError through aiocoap's own dispatch (unknown paths, unknown methods)."""

    def __init__(self, exc: PikafkaError) -> None:
        super().__init__(str(exc))
        self.exc = exc

    def to_message(self) -> aiocoap.Message:
        return error_message(self.exc)


# ------------------------------------------------------------------------------------------------ request bodies


def decode_body(request: aiocoap.Message, *, json_allowed: bool = False) -> dict[str, Any]:
    """The request's map: CBOR (or JSON on admin resources); INVALID_REQUEST when it is not a map."""
    cf = request.opt.content_format
    cf = None if cf is None else int(cf)
    if not request.payload:
        raise PikafkaError(ErrorCode.INVALID_REQUEST, "the request has no body")
    if cf in (None, CT_CBOR):
        try:
            body = cbor2.loads(request.payload)
        except Exception as exc:  # cbor2 raises several types (and ValueError/TypeError) on garbage
            raise PikafkaError(ErrorCode.INVALID_REQUEST, f"body is not valid CBOR: {exc}") from None
    elif cf == CT_JSON and json_allowed:
        try:
            body = json.loads(request.payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise PikafkaError(ErrorCode.INVALID_REQUEST, f"body is not valid JSON: {exc}") from None
    else:
        raise PikafkaError(
            ErrorCode.UNSUPPORTED_CONTENT_FORMAT,
            f"content format {cf} is not accepted here (use {CT_CBOR}" + (f" or {CT_JSON})" if json_allowed else ")"),
        )
    if not isinstance(body, dict):
        raise PikafkaError(ErrorCode.INVALID_REQUEST, "body must be a map")
    return body


class Fields:
    """Typed access to a request map; every failure is INVALID_REQUEST naming the field."""

    _MISSING = object()

    def __init__(self, body: dict[str, Any], where: str = "") -> None:
        self.body = body
        self.where = where

    def _fail(self, key: str, what: str) -> PikafkaError:
        return PikafkaError(ErrorCode.INVALID_REQUEST, f"{self.where}{key} must be {what}")

    def _get(self, key: str, default: Any) -> Any:
        value = self.body.get(key, self._MISSING)
        if value is self._MISSING:
            if default is self._MISSING:
                raise PikafkaError(ErrorCode.INVALID_REQUEST, f"{self.where}{key} is missing")
            return default
        return value

    def integer(self, key: str, default: Any = _MISSING, lo: int = -(2**63), hi: int = 2**63 - 1) -> int:
        value = self._get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self._fail(key, f"an integer between {lo} and {hi}")
        return value

    def text(self, key: str, default: Any = _MISSING, *, nullable: bool = False, max_len: int = 255) -> Any:
        value = self._get(key, default)
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not 0 < len(value) <= max_len:
            raise self._fail(key, f"a text string of 1..{max_len} characters" + (" or null" if nullable else ""))
        return value

    def int_list(self, key: str) -> list[int]:
        value = self._get(key, self._MISSING)
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self._fail(key, "an array of integers")
        return value

    def maps(self, key: str, default: Any = _MISSING) -> list[dict[str, Any]]:
        value = self._get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._fail(key, "an array of maps")
        return value


def incarnation_of(f: Fields) -> str:
    """Brokers may send their incarnation as text or as an integer; it is only ever compared for equality."""
    value = f.body.get("incarnation")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return str(f.text("incarnation", max_len=64))


# ---------------------------------------------------------------------------------------------- response bodies


def reply(
    request: aiocoap.Message, body: Any, code: Code = Code.CONTENT, *, json_allowed: bool = False
) -> aiocoap.Message:
    """CBOR, or JSON when an admin resource is asked for it with Accept."""
    accept = request.opt.accept
    accept = None if accept is None else int(accept)
    if accept == CT_JSON and json_allowed:
        return aiocoap.Message(code=code, payload=json.dumps(body).encode(), content_format=CT_JSON)
    if accept not in (None, CT_CBOR):
        raise PikafkaError(ErrorCode.NOT_ACCEPTABLE, f"cannot answer in content format {accept}")
    return aiocoap.Message(code=code, payload=cbor2.dumps(body), content_format=CT_CBOR)


# --------------------------------------------------------------------------------------------------- resources


class _Resource(resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """Dispatches render_<method>; turns every failure into a one-line error response."""

    def __init__(self, coordinator: Coordinator) -> None:
        super().__init__()
        self.zk = coordinator

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        handler: Handler | None = getattr(self, f"render_{str(request.code).lower()}", None)
        try:
            if handler is None:
                raise PikafkaError(ErrorCode.METHOD_NOT_ALLOWED, f"{request.code} is not allowed here")
            return await handler(request)
        except PikafkaError as exc:
            return error_message(exc)
        except Exception:
            log.exception("unexpected failure handling %s %s", request.code, request.get_request_uri())
            return error_message(
                PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, "unexpected error; see the zookeeper log")
            )


class RegisterResource(_Resource):
    """POST /zk/register: a broker joins (or rejoins) the cluster."""

    rt = "pikafka.zk.register"

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        f = Fields(decode_body(request))
        broker_id = f.integer("broker_id", lo=0, hi=MAX_BROKER_ID)
        host = f.text("host")
        port = f.integer("port", lo=1, hi=65535)
        rack = f.text("rack", None, nullable=True)
        incarnation = incarnation_of(f)
        cluster_id = f.text("cluster_id", None, nullable=True, max_len=64)

        def register(s: ClusterState, now: float) -> dict[str, Any]:
            s.register(broker_id, host, port, rack, incarnation, cluster_id, now)
            return {
                "cluster_id": s.cluster_id,
                "metadata_version": s.metadata_version,
                "heartbeat_interval_ms": self.zk.heartbeat_interval_ms,
                "session_timeout_ms": self.zk.session_timeout_ms,
                "metadata": s.snapshot(),
            }

        return reply(request, self.zk.run(register), Code.CHANGED)


class HeartbeatResource(_Resource):
    """POST /zk/heartbeat: keeps a broker's session; answers with the metadata when the broker's copy is older."""

    rt = "pikafka.zk.heartbeat"

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        f = Fields(decode_body(request))
        broker_id = f.integer("broker_id", lo=0, hi=MAX_BROKER_ID)
        incarnation = incarnation_of(f)
        known_version = f.integer("metadata_version", -1)
        reports = []
        for i, raw in enumerate(f.maps("partitions", [])):
            p = Fields(raw, f"partitions[{i}].")
            reports.append(
                PartitionReport(
                    p.text("topic"),
                    p.integer("partition", lo=0),
                    p.integer("log_end_offset", lo=0),
                    p.integer("leader_epoch", -1),
                )
            )

        def heartbeat(s: ClusterState, now: float) -> dict[str, Any]:
            s.heartbeat(broker_id, incarnation, reports, now)
            # Normally the broker's copy is older; any difference (say, a zookeeper restored from a backup) resyncs it.
            stale = known_version != s.metadata_version
            return {"metadata_version": s.metadata_version, "metadata": s.snapshot() if stale else None}

        return reply(request, self.zk.run(heartbeat), Code.CHANGED)


class IsrResource(_Resource):
    """POST /zk/isr: a partition's leader shrinks or expands its in-sync replica set."""

    rt = "pikafka.zk.isr"

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        f = Fields(decode_body(request))
        topic = f.text("topic")
        partition = f.integer("partition", lo=0)
        leader_id = f.integer("leader_id", lo=0, hi=MAX_BROKER_ID)
        leader_epoch = f.integer("leader_epoch", lo=0)
        isr = f.int_list("isr")

        def alter(s: ClusterState, now: float) -> dict[str, Any]:
            p = s.alter_isr(topic, partition, leader_id, leader_epoch, isr)
            return {
                "leader": p.leader,
                "leader_epoch": p.leader_epoch,
                "isr": list(p.isr),
                "metadata_version": s.metadata_version,
            }

        return reply(request, self.zk.run(alter), Code.CHANGED)


class MetadataResource(_Resource):
    """GET /metadata[?topic=NAME...]: the snapshot, the same shape brokers serve."""

    rt = "pikafka.metadata"

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        wanted = [q[len("topic=") :] for q in request.opt.uri_query if q.startswith("topic=")]
        snapshot = self.zk.state.snapshot(wanted or None)
        return reply(request, snapshot, json_allowed=True)


class TopicsResource(_Resource):
    """GET /topics lists, POST /topics creates (same bodies as a broker's)."""

    rt = "pikafka.topics"

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return reply(request, {"topics": sorted(self.zk.state.topics)}, json_allowed=True)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        body = decode_body(request, json_allowed=True)
        f = Fields(body)
        name = body.get("name")  # create_topic checks it (check_topic_name names the rule broken)
        partitions = f.integer("partitions", 1)
        replication_factor = f.integer("replication_factor", 1)
        config = body.get("config") or {}
        if not isinstance(config, dict):
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "config must be a map")
        topic = self.zk.run(lambda s, now: s.create_topic(name, partitions, replication_factor, config, now))
        return reply(
            request, {"name": topic.name, "partitions": len(topic.partitions)}, Code.CREATED, json_allowed=True
        )


class TopicResource(_Resource, resource.PathCapable):  # type: ignore[misc]  # aiocoap is untyped
    """GET /topics/{name} describes, DELETE /topics/{name} deletes (a tombstone tells brokers to drop the data)."""

    def _name(self, request: aiocoap.Message) -> str:
        path = request.opt.uri_path
        if len(path) != 1 or not path[0]:
            raise PikafkaError(ErrorCode.NOT_FOUND, "no resource at /topics/" + "/".join(path))
        return str(path[0])

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        name = self._name(request)
        topic = self.zk.state.topics.get(name)
        if topic is None:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name[:60]!r} does not exist")
        return reply(request, topic.describe(), json_allowed=True)

    async def render_delete(self, request: aiocoap.Message) -> aiocoap.Message:
        name = self._name(request)
        self.zk.run(lambda s, now: s.delete_topic(name))
        return aiocoap.Message(code=Code.DELETED)


class ZookeeperSite(resource.Site):  # type: ignore[misc]  # aiocoap is untyped
    """A Site whose unknown paths answer `NOT_FOUND: ...` like every other pikafka error."""

    async def render_to_pipe(self, request: Any) -> None:
        try:
            await super().render_to_pipe(request)
        except coap_error.NotFound:
            path = "/" + "/".join(request.request.opt.uri_path)
            raise _PikafkaRenderableError(PikafkaError(ErrorCode.NOT_FOUND, f"no resource at {path[:100]}")) from None


def build_site(coordinator: Coordinator) -> resource.Site:
    site = ZookeeperSite()
    site.add_resource([".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader, impl_info=None))
    site.add_resource(["zk", "register"], RegisterResource(coordinator))
    site.add_resource(["zk", "heartbeat"], HeartbeatResource(coordinator))
    site.add_resource(["zk", "isr"], IsrResource(coordinator))
    site.add_resource(["metadata"], MetadataResource(coordinator))
    site.add_resource(["topics"], TopicsResource(coordinator))
    site.add_resource(["topics"], TopicResource(coordinator))
    return site
