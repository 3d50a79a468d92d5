"""The zookeeper's metadata snapshot as typed values, checked once when it arrives.

Shape (docs/protocol.md, `/metadata`): {cluster_id, metadata_version, controller, brokers: [{id, host, port, rack,
alive}], topics: [{name, replication_factor, config, partitions: [{partition, leader, leader_epoch, replicas, isr}]}],
deleted_topics: [names]}. The raw map is kept too: a clustered broker serves it unchanged at /metadata, so clients
may bootstrap from the zookeeper or from any broker and read the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pikafka.errors import ErrorCode, PikafkaError
from pikafka.topic_config import TopicConfig


@dataclass(frozen=True)
class BrokerInfo:
    id: int
    host: str
    port: int
    alive: bool


@dataclass(frozen=True)
class PartitionAssignment:
    partition: int
    leader: int | None
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True)
class TopicAssignment:
    name: str
    replication_factor: int
    config: TopicConfig
    partitions: tuple[PartitionAssignment, ...]


@dataclass(frozen=True)
class MetadataSnapshot:
    cluster_id: str
    version: int
    brokers: dict[int, BrokerInfo]
    topics: dict[str, TopicAssignment]
    deleted_topics: frozenset[str]
    raw: dict[str, Any]

    def filtered(self, names: list[str] | None) -> dict[str, Any]:
        """The raw snapshot, limited to the named topics (unknown names are left out, as the zookeeper does)."""
        if not names:
            return self.raw
        wanted = set(names)
        return {**self.raw, "topics": [t for t in self.raw.get("topics", []) if t.get("name") in wanted]}


def _bad(reason: str) -> PikafkaError:
    return PikafkaError(ErrorCode.INVALID_REQUEST, f"metadata snapshot: {reason}")


def _int(raw: dict[str, Any], key: str, *, nullable: bool = False) -> Any:
    value = raw.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"{key!r} must be an integer")
    return value


def _ints(raw: dict[str, Any], key: str) -> tuple[int, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _bad(f"{key!r} must be an array of integers")
    return tuple(value)


def parse_snapshot(raw: object) -> MetadataSnapshot:
    if not isinstance(raw, dict):
        raise _bad("must be a map")
    cluster_id = raw.get("cluster_id")
    if not isinstance(cluster_id, str) or not cluster_id:
        raise _bad("'cluster_id' must be a text string")
    version = _int(raw, "metadata_version")
    brokers: dict[int, BrokerInfo] = {}
    for entry in raw.get("brokers") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("host"), str):
            raise _bad("every broker needs an id, a host and a port")
        brokers[_int(entry, "id")] = BrokerInfo(
            _int(entry, "id"), entry["host"], _int(entry, "port"), bool(entry.get("alive", True))
        )
    topics: dict[str, TopicAssignment] = {}
    for entry in raw.get("topics") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _bad("every topic needs a name")
        name = entry["name"]
        partitions = []
        for i, p in enumerate(entry.get("partitions") or []):
            if not isinstance(p, dict) or _int(p, "partition") != i:
                raise _bad(f"topic {name!r}: partitions must be listed in order")
            partitions.append(
                PartitionAssignment(
                    i, _int(p, "leader", nullable=True), _int(p, "leader_epoch"), _ints(p, "replicas"), _ints(p, "isr")
                )
            )
        if not partitions:
            raise _bad(f"topic {name!r} has no partitions")
        try:
            config = TopicConfig.from_dict(entry.get("config") or {})
        except PikafkaError as exc:
            raise _bad(f"topic {name!r}: {exc.reason}") from None
        topics[name] = TopicAssignment(name, _int(entry, "replication_factor"), config, tuple(partitions))
    deleted = raw.get("deleted_topics") or []
    if not isinstance(deleted, list) or not all(isinstance(n, str) for n in deleted):
        raise _bad("'deleted_topics' must be an array of names")
    return MetadataSnapshot(cluster_id, version, brokers, topics, frozenset(deleted), raw)
