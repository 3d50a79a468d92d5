"""Many acks=all produces waiting on one partition while its followers are paused: each one gets its own answer.

Regression: the waiters shared one future, and the first waiter's timeout cancelled it for all the others, which
then got no answer at all instead of REQUEST_TIMED_OUT."""

from __future__ import annotations

import asyncio

import pytest
from aiocoap import Code

from pikafka.errors import ErrorCode
from pikafka.records import Record, encode_batch
from tests.cluster_fixtures import Cluster

pytestmark = pytest.mark.timeout(120)


async def test_every_waiting_acks_all_produce_is_answered(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("waits")
    leader = await client.leader_of("waits")
    assert leader is not None
    followers = cluster.others(leader)
    for follower in followers:
        cluster.broker(follower).pause()
    try:

        async def produce(i: int, timeout_ms: int):
            body = {
                "acks": -1,
                "timeout_ms": timeout_ms,
                "batches": [{"topic": "waits", "partition": 0, "records": encode_batch([Record(b"w%d" % i)])}],
            }
            # The client waits far longer than any broker timeout: silence would show as REQUEST_TIMED_OUT raised
            # here by the client itself, which the assertion below tells apart from the broker's own answer.
            return await client.request(cluster.broker(leader).port, Code.POST, "/produce", body, timeout=20)

        replies = await asyncio.gather(*(produce(i, 300 if i == 0 else 800 + 100 * i) for i in range(5)))
    finally:
        for follower in followers:
            cluster.broker(follower).resume()
    for reply in replies:
        assert not reply.ok, "acks=all acknowledged while every follower was paused"
        error = reply.error()
        assert error.code in (
            ErrorCode.REQUEST_TIMED_OUT,
            ErrorCode.NOT_ENOUGH_REPLICAS,
            ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ), error
