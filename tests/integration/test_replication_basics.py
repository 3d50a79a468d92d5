"""Replication on a healthy three-broker cluster: real zookeeper and broker processes on loopback."""

from __future__ import annotations

import asyncio

import pytest
from aiocoap import Code

from pikafka.errors import ErrorCode
from pikafka.records import Record, encode_batch
from tests.cluster_fixtures import Cluster, RetryingProducer, producer_id_for
from tests.history_checker import check

pytestmark = pytest.mark.timeout(120)


async def test_replicas_end_equal_with_identical_bytes(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("r3", via=2, segment_bytes=4096)  # created through a broker, small segments to roll
    producer = RetryingProducer(client, "r3", "p", producer_id_for("p"))
    for _ in range(120):
        await producer.send_one()
    await client.wait_in_sync("r3", [1, 2, 3])
    ends = {b: await client.log_end(b, "r3") for b in cluster.brokers}
    assert set(ends.values()) == {120}, ends
    leader = await client.leader_of("r3")
    assert leader is not None
    leader_bytes = cluster.broker(leader).log_bytes("r3")
    for follower in cluster.others(leader):
        assert cluster.broker(follower).log_bytes("r3") == leader_bytes
    consumed = await client.read_partition("r3")
    verdict = check(producer.acks, consumed, producer.order)
    assert verdict.ok, verdict.summary()


async def test_acks_all_is_answered_only_once_every_follower_has_it(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("acked")
    leader = await client.leader_of("acked")
    assert leader is not None
    for i in range(20):
        batch = encode_batch([Record(value=f"v{i}".encode())])
        body = {"acks": -1, "batches": [{"topic": "acked", "partition": 0, "records": batch}]}
        reply = await client.request(cluster.broker(leader).port, Code.POST, "/produce", body)
        assert reply.ok, reply.error()
        last = reply.body["results"][0]["last_offset"]
        # The moment the answer arrives, every follower's log already holds the record.
        for follower in cluster.others(leader):
            end = await client.log_end(follower, "acked")
            assert end is not None and end > last, (follower, end, last)


async def test_produce_to_a_follower_is_refused(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("t")
    leader = await client.leader_of("t")
    assert leader is not None
    follower = cluster.others(leader)[0]
    batch = encode_batch([Record(value=b"x")])
    body = {"acks": 1, "batches": [{"topic": "t", "partition": 0, "records": batch}]}
    reply = await client.request(cluster.broker(follower).port, Code.POST, "/produce", body)
    assert not reply.ok and reply.error().code is ErrorCode.NOT_LEADER_OR_FOLLOWER
    fetch = {"partitions": [{"topic": "t", "partition": 0, "offset": 0}]}
    reply = await client.request(cluster.broker(follower).port, Code.FETCH, "/fetch", fetch)
    assert not reply.ok and reply.error().code is ErrorCode.NOT_LEADER_OR_FOLLOWER


async def test_metadata_is_the_same_from_zookeeper_and_every_broker(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("m1", partitions=3)
    await client.create_topic("m2", rf=2)

    async def all_agree() -> bool:
        expected = await client.zk_metadata()
        for b in cluster.brokers.values():
            reply = await client.request(b.port, Code.GET, "/metadata")
            if not reply.ok or reply.body != expected:
                return False
        return True

    await client.wait_for(all_agree, "the same /metadata everywhere")
    meta = await client.zk_metadata()
    assert {t["name"] for t in meta["topics"]} == {"m1", "m2"}


async def test_topic_deletion_removes_data_on_every_replica(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("doomed")
    producer = RetryingProducer(client, "doomed", "p", producer_id_for("doomed"))
    for _ in range(5):
        await producer.send_one()
    assert all(b.partition_dir("doomed").is_dir() for b in cluster.brokers.values())
    reply = await client.request(cluster.broker(3).port, Code.DELETE, "/topics/doomed")
    assert reply.code == Code.DELETED, reply.payload

    async def gone_everywhere() -> bool:
        return not any(b.partition_dir("doomed").exists() for b in cluster.brokers.values())

    await client.wait_for(gone_everywhere, "partition directories removed on every replica")
    meta = await client.zk_metadata()
    assert "doomed" in meta["deleted_topics"]
    await asyncio.sleep(0)
