"""A partition's produce acknowledgements across flushes, the high watermark and role changes (no network)."""

from __future__ import annotations

from pathlib import Path

from pi_broker.log import PartitionLog
from pi_broker.partition import Partition, TopicPartition
from pi_broker.pending_acks import PendingProduce
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import Record, encode_batch, parse_header
from pikafka.topic_config import TopicConfig


def timed_out() -> PikafkaError:
    return PikafkaError(ErrorCode.REQUEST_TIMED_OUT, "late")


def leader(tmp_path: Path) -> Partition:
    partition = Partition(
        TopicPartition("t", 0), PartitionLog.open(tmp_path, TopicConfig()), broker_id=1, clustered=True
    )
    partition.become_leader(epoch=3, replicas=(1, 2), isr=(1, 2), metadata_version=1, now=0.0)
    return partition


def write(partition: Partition, value: bytes) -> int:
    batch = encode_batch([Record(value)])
    return partition.append(batch, parse_header(batch)).last_offset


async def test_acks_one_waits_for_the_fsync_and_acks_all_for_the_followers(tmp_path: Path) -> None:
    partition = leader(tmp_path)
    offset = write(partition, b"x")
    seen: dict[str, object] = {}
    one, all_ = PendingProduce("one", on_timeout=timed_out), PendingProduce("all", on_timeout=timed_out)
    partition.ack_when_flushed(offset, one)
    partition.ack_when_committed(offset, all_)
    one.arm(10, lambda outcome: seen.setdefault("one", outcome))
    all_.arm(10, lambda outcome: seen.setdefault("all", outcome))
    partition.log.flush()
    partition.flushed()
    assert seen == {"one": "one"}  # durable here; the follower has not fetched it yet
    partition.record_follower_fetch(2, offset + 1, now=0.1)
    assert seen == {"one": "one", "all": "all"}
    partition.close()


async def test_losing_leadership_fails_every_waiting_produce(tmp_path: Path) -> None:
    partition = leader(tmp_path)
    offset = write(partition, b"x")
    seen: list[object] = []
    for waits in (partition.ack_when_flushed, partition.ack_when_committed):
        pending = PendingProduce(None, on_timeout=timed_out)
        waits(offset, pending)
        pending.arm(10, seen.append)
    partition.become_follower(leader_id=2, epoch=4, replicas=(1, 2))
    assert [getattr(o, "code", None) for o in seen] == [ErrorCode.NOT_LEADER_OR_FOLLOWER] * 2
    partition.log.flush()
    partition.flushed()  # the record may yet be fsynced here: nobody is told "success" for it any more
    assert len(seen) == 2
    partition.close()


async def test_a_deleted_partition_answers_its_waiting_produces(tmp_path: Path) -> None:
    partition = leader(tmp_path)
    offset = write(partition, b"x")
    pending, seen = PendingProduce(None, on_timeout=timed_out), []
    partition.ack_when_committed(offset, pending)
    pending.arm(10, seen.append)
    partition.delete()
    assert [getattr(o, "code", None) for o in seen] == [ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]
