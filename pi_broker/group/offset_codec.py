"""The records of `__consumer_offsets`: one per committed partition position.

key   = CBOR array [group, topic, partition]
value = CBOR map {"offset", "generation", "metadata", "timestamp"}, or no value (null) as a tombstone: the group's
        offset for that partition was reset or deleted.
The latest record of a key wins when a coordinator rebuilds its state by reading the partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from pikafka.records import Record


@dataclass(frozen=True)
class OffsetKey:
    group: str
    topic: str
    partition: int


@dataclass(frozen=True)
class CommittedOffset:
    offset: int
    generation: int
    metadata: str
    timestamp_ms: int


def encode_commit(key: OffsetKey, value: CommittedOffset | None) -> Record:
    raw_key = cbor2.dumps([key.group, key.topic, key.partition])
    if value is None:
        return Record(value=None, key=raw_key)
    body = {
        "offset": value.offset,
        "generation": value.generation,
        "metadata": value.metadata,
        "timestamp": value.timestamp_ms,
    }
    return Record(value=cbor2.dumps(body), key=raw_key)


def decode_commit(raw_key: bytes | None, raw_value: bytes | None) -> tuple[OffsetKey, CommittedOffset | None] | None:
    """The commit a record holds, or None for a record that is not one (skipped, never fatal: a coordinator must
    load whatever the partition holds)."""
    try:
        key: Any = cbor2.loads(raw_key) if raw_key else None
        if not (isinstance(key, list) and len(key) == 3):
            return None
        group, topic, partition = key
        if not (isinstance(group, str) and isinstance(topic, str) and isinstance(partition, int)):
            return None
        offset_key = OffsetKey(group, topic, partition)
        if raw_value is None:
            return offset_key, None
        value: Any = cbor2.loads(raw_value)
        if not isinstance(value, dict):
            return None
        return offset_key, CommittedOffset(
            int(value["offset"]),
            int(value.get("generation", -1)),
            str(value.get("metadata", "")),
            int(value.get("timestamp", 0)),
        )
    except (ValueError, KeyError, TypeError, cbor2.CBORDecodeError):
        return None
