"""(e) SIGSTOP the leader until a new one is elected, SIGCONT it: the stale leader acknowledges none of the acks=all
writes it takes and exposes none to consumers; it learns the new epoch, truncates its divergent tail, catches up and
rejoins the ISR with a log byte-identical to the new leader's."""

from __future__ import annotations

import asyncio

import pytest
from aiocoap import Code

from pikafka.errors import PikafkaError
from pikafka.records import Record, encode_batch
from tests.cluster_fixtures import Cluster, RetryingProducer, producer_id_for
from tests.history_checker import check

pytestmark = pytest.mark.timeout(120)


async def test_paused_leader_is_fenced_and_rejoins(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("paused")
    old = await client.leader_of("paused")
    assert old is not None
    producer = RetryingProducer(client, "paused", "w", producer_id_for("paused-w"))
    for _ in range(30):
        await producer.send_one()

    cluster.broker(old).pause()

    async def replaced() -> bool:
        leader = await client.leader_of("paused")
        return leader is not None and leader != old

    await client.wait_for(replaced, "a new leader while the old one is paused")
    for _ in range(30):
        await producer.send_one()  # acknowledged by the new leader

    # The stale leader wakes up still believing it leads; writes sent straight to it must never be acknowledged.
    cluster.broker(old).resume()
    stale_values = [f"stale-{i}".encode() for i in range(5)]

    async def stale_write(value: bytes) -> bool:
        body = {
            "acks": -1,
            "timeout_ms": 3000,
            "batches": [{"topic": "paused", "partition": 0, "records": encode_batch([Record(value=value)])}],
        }
        try:
            reply = await client.request(cluster.broker(old).port, Code.POST, "/produce", body, timeout=8)
        except PikafkaError:
            return False
        return bool(reply.ok)

    answers = await asyncio.gather(*(stale_write(v) for v in stale_values))
    assert not any(answers), "a stale leader acknowledged an acks=all write"

    for _ in range(30):
        await producer.send_one()
    await client.wait_in_sync("paused", [1, 2, 3])
    leader = await client.leader_of("paused")
    assert leader is not None and leader != old
    assert cluster.broker(old).log_bytes("paused") == cluster.broker(leader).log_bytes("paused")
    consumed = await client.read_partition("paused")
    assert not any(c.value in stale_values for c in consumed), "a consumer saw a write only the stale leader took"
    verdict = check(producer.acks, consumed, producer.order)
    assert verdict.ok, verdict.summary()
