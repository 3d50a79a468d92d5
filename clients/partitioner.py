"""Choosing a partition for a record.

Keyed records go where Kafka's default partitioner would put them (murmur2 of the key, made positive, modulo the
partition count), so the mapping is stable across processes, Python runs and machines, unlike `hash()`, and matches
what Kafka clients do. Keyless records stick to one partition until its batch is sealed and then move on, which
fills batches instead of scattering single records over every partition.
"""

from __future__ import annotations

import functools
import random

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as an unsigned 32-bit number."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = (h * _M) & _MASK32
        h ^= k
    extra = length & 3
    if extra == 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partition_count: int) -> int:
    if partition_count < 1:
        raise ValueError("a topic has at least one partition")
    # Kafka's Utils.toPositive: clear the sign bit of the signed 32-bit hash.
    return (murmur2(key) & 0x7FFFFFFF) % partition_count


# Sensor networks reuse a handful of keys (one per device) for every record; murmur2 in Python costs microseconds.
cached_partition_for_key = functools.lru_cache(maxsize=4096)(partition_for_key)


class StickyPartitioner:
    """Keyless records: one partition per topic until the producer seals that partition's batch."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._current: dict[str, int] = {}

    def partition(self, topic: str, partition_count: int) -> int:
        current = self._current.get(topic)
        if current is None or current >= partition_count:
            current = self._rng.randrange(partition_count)
            self._current[topic] = current
        return current

    def batch_sealed(self, topic: str, partition: int, partition_count: int) -> None:
        """Move on from the partition whose batch was just sealed (to the next one, round-robin)."""
        if self._current.get(topic) == partition and partition_count > 1:
            self._current[topic] = (partition + 1) % partition_count
