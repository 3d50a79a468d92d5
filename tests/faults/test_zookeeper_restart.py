"""(c) restart the zookeeper during production: the brokers keep serving what they lead while it is down, and
re-register and reconverge without operator action when it returns."""

from __future__ import annotations

import asyncio

import pytest

from tests.cluster_fixtures import Cluster, RetryingProducer, producer_id_for
from tests.history_checker import check

pytestmark = pytest.mark.timeout(120)


async def test_zookeeper_restart_during_production(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("logs", partitions=3)
    producers = [
        RetryingProducer(client, "logs", f"w{p}", producer_id_for(f"logs-w{p}"), partition=p) for p in range(3)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in producers]

    def total() -> int:
        return sum(len(p.acks) for p in producers)

    async def acked(n: int) -> bool:
        return total() >= n

    await client.wait_for(lambda: acked(60), "60 acks")
    cluster.zookeeper.kill9()
    # While it is down the leaders keep taking acks=all writes (every follower is still fetching).
    before = total()
    await client.wait_for(lambda: acked(before + 60), "60 acks with the zookeeper down")
    cluster.zookeeper.start()
    await client.wait_for(lambda: client.live_brokers_are({1, 2, 3}), "every broker alive again at the zookeeper")
    before = total()
    await client.wait_for(lambda: acked(before + 60), "60 acks after the zookeeper came back")
    stop.set()
    await asyncio.gather(*tasks)
    consumed = []
    for p in range(3):
        await client.wait_in_sync("logs", [1, 2, 3], partition=p)
        consumed += await client.read_partition("logs", p)
    acks = [a for p in producers for a in p.acks]
    order = {k: v for p in producers for k, v in p.order.items()}
    verdict = check(acks, consumed, order)
    assert verdict.ok, verdict.summary()
