"""Request bodies as typed values: decoded maps (from CBOR or JSON) in, dataclasses out, INVALID_REQUEST otherwise.

Field names and defaults are the ones in docs/protocol.md. Nothing here knows CoAP; the resources decode the body
and hand the map over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import ACKS_ALL, ACKS_LEADER, ACKS_NONE, DEFAULT_FETCH_MAX_BYTES, MAX_WAIT_MS

_MISSING = object()


def _bad(reason: str) -> PikafkaError:
    return PikafkaError(ErrorCode.INVALID_REQUEST, reason)


def require_map(body: object, what: str = "request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad(f"{what} must be a map, got {type(body).__name__}")
    return body


def get_int(fields: dict[str, Any], key: str, default: object = _MISSING, *, where: str = "") -> int:
    value = fields.get(key, default)
    if value is _MISSING:
        raise _bad(f"{where}missing field {key!r}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"{where}field {key!r} must be an integer")
    return value


def get_text(fields: dict[str, Any], key: str, *, where: str = "") -> str:
    if key not in fields:
        raise _bad(f"{where}missing field {key!r}")
    value = fields[key]
    if not isinstance(value, str):
        raise _bad(f"{where}field {key!r} must be a text string")
    return value


def get_list(fields: dict[str, Any], key: str, *, where: str = "") -> list[Any]:
    if key not in fields:
        raise _bad(f"{where}missing field {key!r}")
    value = fields[key]
    if not isinstance(value, list):
        raise _bad(f"{where}field {key!r} must be an array")
    return value


@dataclass(frozen=True)
class CreateTopicRequest:
    name: object  # checked by the broker with check_topic_name, so INVALID_TOPIC names the rule broken
    partitions: int
    replication_factor: int
    config: object

    @classmethod
    def parse(cls, body: object) -> CreateTopicRequest:
        fields = require_map(body)
        if "name" not in fields:
            raise _bad("missing field 'name'")
        return cls(
            name=fields["name"],
            partitions=get_int(fields, "partitions", 1),
            replication_factor=get_int(fields, "replication_factor", 1),
            config=fields.get("config", {}),
        )


class ProduceBatch(NamedTuple):
    topic: str
    partition: int
    records: bytes


class ProduceRequest(NamedTuple):
    """NamedTuples, not frozen dataclasses, like every value a produce request makes on its way to the log: cheaper to
    build, and the broker builds several per request (docs/benchmarks-history.md, produce_path_bench.py)."""

    acks: int
    timeout_ms: int
    batches: list[ProduceBatch]

    @classmethod
    def parse(cls, body: object) -> ProduceRequest:
        fields = require_map(body)
        acks = get_int(fields, "acks", ACKS_LEADER)
        if acks not in (ACKS_NONE, ACKS_LEADER, ACKS_ALL):
            raise PikafkaError(ErrorCode.INVALID_ACKS, f"acks must be 0, 1 or -1, got {acks}")
        timeout_ms = get_int(fields, "timeout_ms", 10_000)
        if not 0 <= timeout_ms <= 300_000:
            raise _bad("timeout_ms must be between 0 and 300000")
        raw_batches = get_list(fields, "batches")
        if not raw_batches:
            raise _bad("batches is empty")
        batches = []
        for i, raw in enumerate(raw_batches):
            where = f"batches[{i}]: "
            entry = require_map(raw, f"batches[{i}]")
            records = entry.get("records")
            if not isinstance(records, bytes):
                raise _bad(f"{where}field 'records' must be a byte string")
            batches.append(
                ProduceBatch(get_text(entry, "topic", where=where), get_int(entry, "partition", where=where), records)
            )
        return cls(acks, timeout_ms, batches)


@dataclass(frozen=True)
class FetchPosition:
    topic: str
    partition: int
    offset: int
    leader_epoch: int | None = None  # the epoch the sender believes the leader is at; checked when given


@dataclass(frozen=True)
class FetchRequest:
    partitions: list[FetchPosition]
    max_bytes: int
    max_records: int | None
    wait_ms: int
    replica_id: int | None = None  # set by a follower broker fetching to replicate

    @classmethod
    def parse(cls, body: object) -> FetchRequest:
        fields = require_map(body)
        positions = []
        raw_positions = get_list(fields, "partitions")
        if not raw_positions:
            raise _bad("partitions is empty")
        for i, raw in enumerate(raw_positions):
            where = f"partitions[{i}]: "
            entry = require_map(raw, f"partitions[{i}]")
            epoch = entry.get("leader_epoch")
            positions.append(
                FetchPosition(
                    get_text(entry, "topic", where=where),
                    get_int(entry, "partition", where=where),
                    get_int(entry, "offset", where=where),
                    None if epoch is None else get_int(entry, "leader_epoch", where=where),
                )
            )
        max_bytes = get_int(fields, "max_bytes", DEFAULT_FETCH_MAX_BYTES)
        if max_bytes < 1:
            raise _bad("max_bytes must be positive")
        max_records: int | None = None
        if fields.get("max_records") is not None:
            max_records = get_int(fields, "max_records")
            if max_records < 1:
                raise _bad("max_records must be positive")
        wait_ms = get_int(fields, "wait_ms", 0)
        if wait_ms < 0:
            raise _bad("wait_ms must not be negative")
        replica_id: int | None = None
        if fields.get("replica_id") is not None:
            replica_id = get_int(fields, "replica_id")
            if replica_id < 0:
                raise _bad("replica_id must not be negative")
        # Longer waits are shortened rather than refused: a client asking for more simply polls again.
        return cls(positions, max_bytes, max_records, min(wait_ms, MAX_WAIT_MS), replica_id)


@dataclass(frozen=True)
class EpochEndRequest:
    """POST /replica/epoch-end: where does `epoch` end in the leader's log (a follower about to truncate)."""

    topic: str
    partition: int
    epoch: int
    leader_epoch: int | None

    @classmethod
    def parse(cls, body: object) -> EpochEndRequest:
        fields = require_map(body)
        leader_epoch = fields.get("leader_epoch")
        return cls(
            get_text(fields, "topic"),
            get_int(fields, "partition"),
            get_int(fields, "epoch"),
            None if leader_epoch is None else get_int(fields, "leader_epoch"),
        )
