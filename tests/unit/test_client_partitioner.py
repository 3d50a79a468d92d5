"""Key -> partition must be the same in every process and every run (and the same as Kafka's Java client)."""

import random
import subprocess
import sys

import pytest

from clients.partitioner import StickyPartitioner, murmur2, partition_for_key


@pytest.mark.parametrize(
    ("key", "partition"),
    # Kafka's DefaultPartitioner over 1000 partitions, as recorded by kafka-python's compatibility test.
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_keyed_partition_matches_kafka_java_client(key, partition):
    assert partition_for_key(key, 1000) == partition


def _signed(h: int) -> int:
    return h - 2**32 if h >= 2**31 else h


def test_murmur2_golden_values():
    # Values of org.apache.kafka.common.utils.Utils.murmur2 (a signed int in Java).
    assert _signed(murmur2(b"21")) == -973932308
    assert _signed(murmur2(b"foobar")) == -790332482
    assert murmur2(b"") == 275646681


def test_partition_is_stable_across_interpreter_runs():
    # hash() of bytes is salted per process; the partitioner must not be.
    code = "from clients.partitioner import partition_for_key as p; print([p(b'k%d' % i, 7) for i in range(50)])"
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert runs == {str([partition_for_key(b"k%d" % i, 7) for i in range(50)]) + "\n"}


def test_keys_spread_over_partitions():
    counts = [0] * 4
    for i in range(4000):
        counts[partition_for_key(f"key-{i}".encode(), 4)] += 1
    assert min(counts) > 800


def test_partition_for_key_rejects_empty_topic():
    with pytest.raises(ValueError):
        partition_for_key(b"k", 0)


def test_sticky_partitioner_stays_until_batch_sealed_then_moves_on():
    sticky = StickyPartitioner(random.Random(1))
    first = sticky.partition("t", 3)
    assert {sticky.partition("t", 3) for _ in range(10)} == {first}
    sticky.batch_sealed("t", first, 3)
    second = sticky.partition("t", 3)
    assert second == (first + 1) % 3
    # sealing a partition we are not sticking to changes nothing
    sticky.batch_sealed("t", (second + 1) % 3, 3)
    assert sticky.partition("t", 3) == second


def test_sticky_partitioner_single_partition_and_shrunk_topic():
    sticky = StickyPartitioner(random.Random(2))
    assert sticky.partition("one", 1) == 0
    sticky.batch_sealed("one", 0, 1)
    assert sticky.partition("one", 1) == 0
    sticky._current["t"] = 5
    assert 0 <= sticky.partition("t", 2) < 2
