"""The client library across a leader's kill -9: `Producer(acks="all")` refreshes metadata, retries the same
batches against the new leader, and a `Consumer` afterwards reads every acknowledged record exactly once, in order."""

from __future__ import annotations

import asyncio

import pytest

from clients import Consumer, Producer, TopicPartition
from tests.cluster_fixtures import Cluster
from tests.history_checker import Ack, Consumed, check

pytestmark = pytest.mark.timeout(180)

RECORDS = 1500


async def test_producer_and_consumer_ride_through_a_leader_kill(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    await cluster.client.create_topic("ride", partitions=2)
    bootstrap = ",".join(b.url for b in cluster.brokers.values())
    victim = await cluster.client.leader_of("ride", 0)
    assert victim is not None
    acks: list[Ack] = []
    order: dict[bytes, tuple[str, int]] = {}

    async with Producer(bootstrap, acks="all", linger_ms=2, retry_backoff_ms=50) as producer:
        futures = []
        for i in range(RECORDS):
            value = b"ride-%05d" % i
            order[value] = ("p", i)
            futures.append((value, await producer.send("ride", value, partition=i % 2)))
            if i == RECORDS // 3:
                cluster.broker(victim).kill9()
            await asyncio.sleep(0.001)  # a steady stream, so the kill lands mid-flight
        for value, fut in futures:
            meta = await fut
            acks.append(Ack(value, meta.partition, meta.offset))

    async def new_leader() -> bool:
        leader = await cluster.client.leader_of("ride", 0)
        return leader is not None and leader != victim

    await cluster.client.wait_for(new_leader, "a new leader for ride-0")
    consumed: list[Consumed] = []
    async with Consumer("ride", bootstrap=bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition("ride", 0), TopicPartition("ride", 1)])
        while len(consumed) < RECORDS:
            batch = await consumer.getmany(timeout_ms=5000)
            records = [r for rs in batch.values() for r in rs]
            assert records, f"consumer stalled at {len(consumed)} of {RECORDS}\n{cluster.logs()}"
            consumed.extend(Consumed(r.value, r.partition, r.offset) for r in records if r.value is not None)
    verdict = check(acks, consumed, order)
    assert verdict.ok, verdict.summary()
    assert len(acks) == RECORDS


async def test_clients_bootstrap_from_the_zookeeper(cluster_factory):
    """`--bootstrap` may name the zookeeper: metadata comes from it, log bounds and records from the leaders."""
    cluster: Cluster = await cluster_factory(3)
    await cluster.client.create_topic("via-zk", partitions=3)
    zk = cluster.zookeeper.url
    async with Producer(zk, acks="all") as producer:
        for i in range(30):
            await producer.send("via-zk", b"z-%02d" % i, partition=i % 3)
    got = []
    async with Consumer("via-zk", bootstrap=zk, auto_offset_reset="earliest") as consumer:
        while len(got) < 30:
            batch = await consumer.getmany(timeout_ms=5000)
            records = [r for rs in batch.values() for r in rs]
            assert records, f"consumer stalled at {len(got)}\n{cluster.logs()}"
            got.extend(records)
    assert sorted(r.value for r in got) == [b"z-%02d" % i for i in range(30)]
