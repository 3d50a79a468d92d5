"""(a) kill -9 the leader while a producer writes with acks=all: a new leader is elected from the ISR, the producer's
retries (same producer id and sequence) land there, and every acknowledged record is read back exactly once."""

from __future__ import annotations

import asyncio

import pytest

from tests.cluster_fixtures import Cluster, RetryingProducer, producer_id_for
from tests.history_checker import check

pytestmark = pytest.mark.timeout(120)


async def test_kill_leader_during_acks_all_production(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("events")
    old_leader = await client.leader_of("events")
    assert old_leader is not None
    producers = [RetryingProducer(client, "events", f"w{i}", producer_id_for(f"events-w{i}")) for i in range(2)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in producers]

    async def acked_at_least(n: int) -> bool:
        return sum(len(p.acks) for p in producers) >= n

    await client.wait_for(lambda: acked_at_least(50), "50 acks before the crash")
    cluster.broker(old_leader).kill9()

    async def new_leader() -> bool:
        leader = await client.leader_of("events")
        return leader is not None and leader != old_leader

    await client.wait_for(new_leader, "a new leader")
    before = sum(len(p.acks) for p in producers)
    await client.wait_for(lambda: acked_at_least(before + 50), "50 more acks from the new leader")
    stop.set()
    await asyncio.gather(*tasks)

    # The old leader comes back as a follower: it truncates what it alone held and catches up.
    cluster.broker(old_leader).start()
    await client.wait_in_sync("events", [1, 2, 3])
    leader = await client.leader_of("events")
    assert leader is not None and leader != old_leader
    assert cluster.broker(old_leader).log_bytes("events") == cluster.broker(leader).log_bytes("events")

    consumed = await client.read_partition("events")
    acks = [a for p in producers for a in p.acks]
    order = {k: v for p in producers for k, v in p.order.items()}
    verdict = check(acks, consumed, order)
    assert verdict.ok, verdict.summary()
    assert not (verdict.lost or verdict.duplicated or verdict.reordered or verdict.moved)
