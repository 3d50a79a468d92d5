"""(f) a network partition between the leader and the rest, with network namespaces (one per node): the same outcome
as (e). The leader is cut off from the zookeeper and the other brokers but stays reachable from the client, so it
takes acks=all writes it cannot replicate; it acknowledges none of them and exposes none to consumers, a new leader
is elected and keeps taking writes, and once the network heals the old leader learns the new epoch, truncates its
divergent tail, catches up and rejoins the ISR with a log byte-identical to the new leader's. The history checker
finds nothing lost, duplicated, reordered or moved.

Needs root, `ip netns` (iproute2) and `nft` (nftables): skipped otherwise, except in CI where a missing tool fails
(.ci/run must install them). The cluster lives on its own namespace LAN (tests/netns_cluster.py) and every client
request is made by an agent process in the client namespace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.history_checker import check
from tests.netns_cluster import NetnsCluster, netns_cluster, require_lan

pytestmark = pytest.mark.timeout(180)

TOPIC = "cut"
STALE_TIMEOUT_MS = 3000


@pytest.fixture
async def lan_cluster(tmp_path: Path) -> AsyncIterator[NetnsCluster]:
    require_lan()
    async with netns_cluster(tmp_path, brokers=3) as cluster:
        yield cluster


async def test_partitioned_leader_is_fenced_and_rejoins(lan_cluster: NetnsCluster) -> None:
    c = lan_cluster
    await c.call("create_topic", name=TOPIC)  # replication factor 3: min_insync_replicas 2
    old = await c.call("leader_of", topic=TOPIC)
    assert old is not None
    others = c.cluster.others(old)

    await c.call("start_producer", topic=TOPIC, name="w")

    async def acked(n: int) -> bool:
        return bool(await c.call("acked", name="w") >= n)

    await c.wait_for(lambda: acked(30), "30 acks before the partition")

    # Cut the leader off from the zookeeper and both followers while the producer is mid-stream; the client still
    # reaches everyone. The batch in flight at the leader can no longer be replicated: it times out and is retried,
    # same producer id and sequence, against whoever the zookeeper names next.
    c.lan.cut_off(f"b{old}", ["zk", *(f"b{o}" for o in others)])

    async def replaced() -> bool:
        leader = await c.call("leader_of", topic=TOPIC)  # the zookeeper's /metadata, asked from the client
        return leader is not None and leader != old

    await c.wait_for(replaced, "a new leader elected while the old one is cut off")
    before = await c.call("acked", name="w")
    await c.wait_for(lambda: acked(before + 30), "30 acks from the new leader during the partition")

    # Nothing can tell the old leader it was replaced, so it still takes writes sent straight to it: it appends
    # them but can never acknowledge them (no follower fetches from it any more), nor let a consumer see them.
    stale_values = [f"stale-{i}" for i in range(5)]
    answers = await c.call("stale_writes", broker=old, topic=TOPIC, values=stale_values, timeout_ms=STALE_TIMEOUT_MS)
    assert not any(a["acknowledged"] for a in answers), f"a partitioned leader acknowledged acks=all: {answers}"
    stale_state = await c.call("describe", broker=old, topic=TOPIC)
    assert stale_state is not None
    # The scenario needs a tail only the stale leader holds, for the heal to fence and truncate.
    assert stale_state["log_end_offset"] > stale_state["high_watermark"], stale_state
    visible = await c.call("visible_on", broker=old, topic=TOPIC)
    assert not set(stale_values) & set(visible), "a consumer of the stale leader saw writes it could not replicate"

    c.lan.heal(f"b{old}")
    before = await c.call("acked", name="w")
    await c.wait_for(lambda: acked(before + 30), "30 acks while the old leader rejoins")

    async def old_back_in_isr() -> bool:
        return old in await c.call("isr_of", topic=TOPIC)

    await c.wait_for(old_back_in_isr, f"broker {old} back in the ISR")
    await c.call("stop_producer", name="w")
    await c.call("wait_in_sync", topic=TOPIC, replicas=[1, 2, 3])
    leader = await c.call("leader_of", topic=TOPIC)
    assert leader is not None and leader != old
    # The partition directories are on the shared filesystem, so the test compares the logs itself.
    assert c.broker(old).log_bytes(TOPIC) == c.broker(leader).log_bytes(TOPIC), c.logs()

    await c.call("read_partition", topic=TOPIC)  # from the current leader, into the agent's history
    acks, consumed, order, stale = c.agent.history()
    assert sorted(s["value"] for s in stale) == stale_values
    assert not any(r.value.decode() in stale_values for r in consumed), (
        "a consumer saw a write only the stale leader took"
    )
    verdict = check(acks, consumed, order)
    assert verdict.ok, verdict.summary()
    assert not (verdict.lost or verdict.duplicated or verdict.reordered or verdict.moved)
