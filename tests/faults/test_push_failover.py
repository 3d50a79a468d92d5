"""A push subscriber (CoAP Observe on /topics/{t}/{p}/records) keeps receiving every record, in order, across a
kill -9 of the partition's leader: it resubscribes at the new leader from its last offset."""

from __future__ import annotations

import asyncio

import pytest

from clients import Producer
from clients.push_subscription import PushSubscriber
from tests.cluster_fixtures import Cluster

pytestmark = pytest.mark.timeout(180)

BEFORE, AFTER = 200, 200


async def test_push_subscriber_rides_through_a_leader_kill(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    await cluster.client.create_topic("pushed-ha")
    bootstrap = ",".join(b.url for b in cluster.brokers.values())
    victim = await cluster.client.leader_of("pushed-ha")
    assert victim is not None
    got = []
    async with (
        PushSubscriber("pushed-ha", bootstrap=bootstrap, start="earliest") as subscriber,
        Producer(bootstrap, acks="all", linger_ms=1, retry_backoff_ms=50) as producer,
    ):
        for i in range(BEFORE):
            await producer.send("pushed-ha", b"v-%04d" % i, partition=0)
        await producer.flush()
        while len(got) < BEFORE:
            record = await subscriber.get(30)
            assert record is not None, f"stalled after {len(got)} records\n{cluster.logs()}"
            got.append(record)
        cluster.broker(victim).kill9()

        async def new_leader() -> bool:
            leader = await cluster.client.leader_of("pushed-ha")
            return leader is not None and leader != victim

        await cluster.client.wait_for(new_leader, "a new leader")
        for i in range(BEFORE, BEFORE + AFTER):
            await producer.send("pushed-ha", b"v-%04d" % i, partition=0)
        await producer.flush()
        while len(got) < BEFORE + AFTER:
            record = await subscriber.get(30)
            assert record is not None, f"stalled after {len(got)} records\n{cluster.logs()}"
            got.append(record)
        await asyncio.sleep(0.5)
        assert await subscriber.get(0.5) is None, "a record was delivered twice"
    assert [r.offset for r in got] == list(range(BEFORE + AFTER))
    assert [r.value for r in got] == [b"v-%04d" % i for i in range(BEFORE + AFTER)]
