"""(d) stop two of three brokers: acks=all produces fail with the retriable NOT_ENOUGH_REPLICAS (or time out), never
succeed silently; when one broker returns and rejoins the ISR they succeed again."""

from __future__ import annotations

import pytest
from aiocoap import Code

from pikafka.errors import ErrorCode
from pikafka.records import Record, encode_batch
from tests.cluster_fixtures import Cluster, RetryingProducer, producer_id_for
from tests.history_checker import Consumed, check

pytestmark = pytest.mark.timeout(120)


async def test_acks_all_refused_below_min_insync_and_accepted_again(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("safe")  # replication factor 3: min_insync_replicas 2 by the zookeeper's default
    leader = await client.leader_of("safe")
    assert leader is not None
    producer = RetryingProducer(client, "safe", "w", producer_id_for("safe-w"))
    for _ in range(20):
        await producer.send_one()
    followers = cluster.others(leader)
    for follower in followers:
        cluster.broker(follower).terminate()

    async def isr_is_leader_alone() -> bool:
        return await client.isr_of("safe") == [leader]

    await client.wait_for(isr_is_leader_alone, "the ISR down to the leader")

    # Each probe is its own producer (no id): a refused probe must not leave a sequence gap for the real producer.
    refused: dict[bytes, ErrorCode] = {}
    for i in range(5):
        value = f"probe-{i}".encode()
        body = {
            "acks": -1,
            "timeout_ms": 1000,
            "batches": [{"topic": "safe", "partition": 0, "records": encode_batch([Record(value=value)])}],
        }
        reply = await client.request(cluster.broker(leader).port, Code.POST, "/produce", body, timeout=5)
        assert not reply.ok, "acks=all succeeded with one in-sync replica"
        error = reply.error()
        # AFTER_APPEND: the probe came in before the leader learned that the ISR it proposed had shrunk.
        assert error.code in (
            ErrorCode.NOT_ENOUGH_REPLICAS,
            ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            ErrorCode.REQUEST_TIMED_OUT,
        ), error
        assert error.retriable
        refused[value] = error.code
    assert ErrorCode.NOT_ENOUGH_REPLICAS in refused.values()

    returning = followers[0]
    cluster.broker(returning).start()

    async def rejoined() -> bool:
        return returning in await client.isr_of("safe")

    await client.wait_for(rejoined, f"broker {returning} back in the ISR")
    for _ in range(20):
        await producer.send_one()
    await client.wait_in_sync("safe", sorted([leader, returning]))
    consumed: list[Consumed] = await client.read_partition("safe")
    verdict = check(producer.acks, [c for c in consumed if c.value not in refused], producer.order)
    assert verdict.ok, verdict.summary()
    # NOT_ENOUGH_REPLICAS is decided before appending: such a probe never reaches the log. (A timed-out or
    # AFTER_APPEND one was appended and may be read: it was never acknowledged, which is all the producer was told.)
    not_appended = {v for v, code in refused.items() if code is ErrorCode.NOT_ENOUGH_REPLICAS}
    assert not any(c.value in not_appended for c in consumed)
