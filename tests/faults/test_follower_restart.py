"""(b) kill -9 a follower while a producer writes, restart it: it catches up and rejoins the ISR, and nothing
acknowledged is lost or duplicated."""

from __future__ import annotations

import asyncio

import pytest

from tests.cluster_fixtures import Cluster, RetryingProducer, producer_id_for
from tests.history_checker import check

pytestmark = pytest.mark.timeout(120)


async def test_killed_follower_catches_up_and_rejoins_the_isr(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("readings")
    leader = await client.leader_of("readings")
    assert leader is not None
    victim = cluster.others(leader)[0]
    producer = RetryingProducer(client, "readings", "w", producer_id_for("readings-w"))
    stop = asyncio.Event()
    task = asyncio.create_task(producer.run(stop))

    async def acked(n: int) -> bool:
        return len(producer.acks) >= n

    await client.wait_for(lambda: acked(30), "30 acks")
    cluster.broker(victim).kill9()

    async def victim_left_isr() -> bool:
        return victim not in await client.isr_of("readings")

    await client.wait_for(victim_left_isr, f"broker {victim} out of the ISR")
    # With min_insync_replicas 2 the remaining two replicas keep taking acks=all writes.
    before = len(producer.acks)
    await client.wait_for(lambda: acked(before + 50), "50 acks without the follower")
    cluster.broker(victim).start()
    before = len(producer.acks)
    await client.wait_for(lambda: acked(before + 20), "20 acks while it catches up")

    async def victim_back_in_isr() -> bool:
        return victim in await client.isr_of("readings")

    await client.wait_for(victim_back_in_isr, f"broker {victim} back in the ISR")
    stop.set()
    await task
    await client.wait_in_sync("readings", [1, 2, 3])
    assert cluster.broker(victim).log_bytes("readings") == cluster.broker(leader).log_bytes("readings")
    consumed = await client.read_partition("readings")
    verdict = check(producer.acks, consumed, producer.order)
    assert verdict.ok, verdict.summary()
