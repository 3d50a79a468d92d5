"""A zookeeper restarted on an EMPTY data directory must not take over a running cluster: the brokers refuse the
new cluster id (CLUSTER_ID_MISMATCH, logged loudly), keep their data and keep serving what they lead."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from aiocoap import Code

from pikafka.records import decode_records, iter_batches
from tests.cluster_fixtures import Cluster, RetryingProducer, producer_id_for

pytestmark = pytest.mark.timeout(120)


async def test_empty_zookeeper_never_overwrites_a_running_cluster(cluster_factory):
    cluster: Cluster = await cluster_factory(3)
    client = cluster.client
    await client.create_topic("keep")
    leader = await client.leader_of("keep")
    assert leader is not None
    producer = RetryingProducer(client, "keep", "w", producer_id_for("keep-w"))
    for _ in range(20):
        await producer.send_one()
    await client.wait_in_sync("keep", [1, 2, 3])

    cluster.zookeeper.terminate()
    shutil.rmtree(cluster.zookeeper.data_dir)
    cluster.zookeeper.start()

    async def every_broker_refused() -> bool:
        return all("CLUSTER_ID_MISMATCH" in b.log_path.read_text(errors="replace") for b in cluster.brokers.values())

    await client.wait_for(every_broker_refused, "every broker refusing the new cluster id")
    await asyncio.sleep(1.0)  # a few more heartbeat rounds: nothing may change on the brokers
    meta = await client.zk_metadata()
    assert meta["topics"] == [], "the empty zookeeper adopted the running cluster"
    for broker in cluster.brokers.values():
        assert broker.alive()
        assert broker.partition_dir("keep").exists(), "a broker dropped its data for the empty zookeeper"
    # The leader still serves everything that was acknowledged.
    body = {"partitions": [{"topic": "keep", "partition": 0, "offset": 0}], "max_bytes": 1 << 20}
    reply = await client.request(cluster.broker(leader).port, Code.FETCH, "/fetch", body)
    assert reply.ok, reply
    values = [r.value for _, b in iter_batches(reply.body["partitions"][0]["records"]) for r in decode_records(b)]
    assert values == [ack.value for ack in producer.acks]
