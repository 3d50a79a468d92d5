"""The zookeeper's pure state machine: sessions, elections, placement, persistence format. Time is a plain float."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_zookeeper.state import ClusterState, PartitionReport, place_replicas
from pikafka.errors import ErrorCode, PikafkaError

TIMEOUT = 2.0


def cluster(n: int, now: float = 0.0, cluster_id: str = "c1") -> ClusterState:
    s = ClusterState(TIMEOUT, cluster_id=cluster_id)
    for i in range(1, n + 1):
        s.register(i, f"10.0.0.{i}", 5683, None, f"inc-{i}", None, now)
    s.drain_events()
    return s


def beat(s: ClusterState, ids: list[int], now: float, reports: dict[int, list[PartitionReport]] | None = None) -> None:
    for i in ids:
        s.heartbeat(i, s.brokers[i].incarnation, (reports or {}).get(i, []), now)


def code_of(excinfo: pytest.ExceptionInfo[PikafkaError]) -> ErrorCode:
    return excinfo.value.code


# --------------------------------------------------------------------------------------------------- sessions


def test_register_marks_alive_and_sets_deadline() -> None:
    s = ClusterState(TIMEOUT, cluster_id="c1")
    v0 = s.metadata_version
    s.register(1, "pi-1", 5683, "shelf-a", "x", None, now=10.0)
    b = s.brokers[1]
    assert b.alive and b.deadline == 12.0 and b.rack == "shelf-a"
    assert s.metadata_version > v0
    assert s.snapshot()["brokers"] == [{"id": 1, "host": "pi-1", "port": 5683, "rack": "shelf-a", "alive": True}]
    assert any("broker 1 joined" in e for e in s.drain_events())


def test_reregister_same_incarnation_does_not_bump_version() -> None:
    s = cluster(1)
    v = s.metadata_version
    s.register(1, "10.0.0.1", 5683, None, "inc-1", "c1", now=1.0)
    assert s.metadata_version == v
    assert s.brokers[1].deadline == 1.0 + TIMEOUT


def test_heartbeat_rearms_session_and_expiry_only_after_timeout() -> None:
    s = cluster(1)
    for t in (1.5, 3.0, 4.5):  # each beat inside the previous session
        beat(s, [1], t)
        assert not s.expire(t + TIMEOUT - 0.01)
        assert s.brokers[1].alive
    assert s.expire(4.5 + TIMEOUT)
    assert not s.brokers[1].alive


def test_heartbeat_without_session_is_unknown_broker() -> None:
    s = cluster(1)
    with pytest.raises(PikafkaError) as e:
        s.heartbeat(7, "x", [], 0.5)
    assert code_of(e) is ErrorCode.UNKNOWN_BROKER
    with pytest.raises(PikafkaError) as e:
        s.heartbeat(1, "another-incarnation", [], 0.5)
    assert code_of(e) is ErrorCode.UNKNOWN_BROKER
    # a heartbeat arriving after the deadline does not revive the session, whatever the service's tick did
    with pytest.raises(PikafkaError) as e:
        s.heartbeat(1, "inc-1", [], TIMEOUT + 0.1)
    assert code_of(e) is ErrorCode.UNKNOWN_BROKER
    assert not s.brokers[1].alive


def test_cluster_id_mismatch() -> None:
    s = cluster(1)
    with pytest.raises(PikafkaError) as e:
        s.register(2, "h", 1, None, "i", "some-other-cluster", 0.0)
    assert code_of(e) is ErrorCode.CLUSTER_ID_MISMATCH
    assert 2 not in s.brokers
    s.register(2, "h", 1, None, "i", "c1", 0.0)  # its own cluster id is fine
    assert s.brokers[2].alive


def test_broker_id_in_use_by_live_session_elsewhere() -> None:
    s = cluster(1)
    with pytest.raises(PikafkaError) as e:
        s.register(1, "10.0.0.99", 5683, None, "impostor", None, 0.5)
    assert code_of(e) is ErrorCode.BROKER_ID_IN_USE
    assert s.brokers[1].host == "10.0.0.1"
    # once the session has expired the id is free again
    s.register(1, "10.0.0.99", 5683, None, "impostor", None, TIMEOUT + 0.1)
    assert s.brokers[1].host == "10.0.0.99" and s.brokers[1].alive


def test_fast_restart_new_incarnation_same_address_bumps_epoch() -> None:
    s = cluster(1)
    s.create_topic("t", 1, 1, None, 0.0)
    assert s.topics["t"].partitions[0].leader == 1
    s.register(1, "10.0.0.1", 5683, None, "inc-1b", None, 0.5)
    p = s.topics["t"].partitions[0]
    # its previous life ended (offline, epoch 1), and it took the partition back cleanly (epoch 2)
    assert p.leader == 1 and p.leader_epoch == 2 and p.isr == [1]


# --------------------------------------------------------------------------------------------------- elections


def test_election_picks_live_isr_member_with_longest_log() -> None:
    s = cluster(3)
    s.create_topic("t", 1, 3, None, 0.0)
    p = s.topics["t"].partitions[0]
    leader = p.leader
    assert leader is not None
    others = [r for r in p.replicas if r != leader]
    reports = {
        others[0]: [PartitionReport("t", 0, 100, 0)],
        others[1]: [PartitionReport("t", 0, 120, 0)],
    }
    beat(s, others, 1.5, reports)
    s.expire(TIMEOUT + 0.01)  # the leader stopped heartbeating
    assert p.leader == others[1]
    assert p.leader_epoch == 1
    assert leader not in p.isr and set(p.isr) == set(others)
    events = s.drain_events()
    assert any(f"partition t-0: leader {leader} -> {others[1]}, epoch 1" in e for e in events)


def test_log_ending_in_a_later_epoch_beats_a_longer_older_one() -> None:
    s = cluster(3)
    s.create_topic("t", 1, 3, None, 0.0)
    p = s.topics["t"].partitions[0]
    _leader, f1, f2 = p.replicas
    # f1's longer tail is from epoch 0; f2 already holds records of epoch 1 (Raft: last term first, then length)
    beat(s, [f1, f2], 1.5, {f1: [PartitionReport("t", 0, 500, 0)], f2: [PartitionReport("t", 0, 300, 1)]})
    s.expire(TIMEOUT + 0.01)
    assert p.leader == f2


def test_election_never_picks_out_of_sync_replica() -> None:
    s = cluster(3)
    s.create_topic("t", 1, 3, None, 0.0)
    p = s.topics["t"].partitions[0]
    leader, f1, f2 = p.replicas
    s.alter_isr("t", 0, leader, 0, [leader, f1])  # f2 fell behind
    beat(s, [f1, f2], 1.5, {f2: [PartitionReport("t", 0, 10_000, 0)], f1: [PartitionReport("t", 0, 5, 0)]})
    s.expire(TIMEOUT + 0.01)
    assert p.leader == f1  # the longer log of f2 does not matter: it is not in sync


def test_ties_go_to_replica_order() -> None:
    s = cluster(3)
    s.create_topic("t", 1, 3, None, 0.0)
    p = s.topics["t"].partitions[0]
    _leader, f1, f2 = p.replicas
    beat(s, [f1, f2], 1.5)
    s.expire(TIMEOUT + 0.01)
    assert p.leader == f1


def test_no_live_isr_goes_offline_then_returning_isr_member_leads() -> None:
    s = cluster(2)
    s.create_topic("t", 1, 2, None, 0.0)
    p = s.topics["t"].partitions[0]
    leader, follower = p.replicas
    s.alter_isr("t", 0, leader, 0, [leader])  # follower out of sync
    beat(s, [follower], 1.5)
    s.expire(TIMEOUT + 0.01)
    assert p.leader is None and p.leader_epoch == 1
    assert p.isr == [leader]  # the dead broker is the only clean candidate, so it stays
    assert s.snapshot()["topics"][0]["partitions"][0]["leader"] is None
    # the out-of-sync follower heartbeating on does not get it
    beat(s, [follower], 3.0)
    assert p.leader is None
    s.register(leader, f"10.0.0.{leader}", 5683, None, "back", None, 3.1)
    assert p.leader == leader and p.leader_epoch == 2


def test_unclean_election_only_when_enabled() -> None:
    for unclean in (0, 1):
        s = cluster(2)
        s.create_topic("t", 1, 2, {"unclean_leader_election": unclean}, 0.0)
        p = s.topics["t"].partitions[0]
        leader, follower = p.replicas
        s.alter_isr("t", 0, leader, 0, [leader])
        beat(s, [follower], 1.5)
        s.expire(TIMEOUT + 0.01)
        if unclean:
            assert p.leader == follower and p.isr == [follower]
            assert any("UNCLEAN" in e for e in s.drain_events())
        else:
            assert p.leader is None


def test_unclean_election_when_a_replica_returns_to_an_offline_partition() -> None:
    s = cluster(2)
    s.create_topic("t", 1, 2, {"unclean_leader_election": 1}, 0.0)
    p = s.topics["t"].partitions[0]
    leader, follower = p.replicas
    s.alter_isr("t", 0, leader, 0, [leader])
    s.expire(TIMEOUT + 0.01)  # both died
    assert p.leader is None
    s.register(follower, "h", 1, None, "new", None, 5.0)
    assert p.leader == follower


def test_follower_death_shrinks_isr_but_never_empties_it() -> None:
    s = cluster(3)
    s.create_topic("t", 1, 3, None, 0.0)
    p = s.topics["t"].partitions[0]
    leader, f1, _f2 = p.replicas
    beat(s, [leader, f1], 1.5)
    s.expire(TIMEOUT + 0.01)  # f2 died
    assert p.leader == leader and p.leader_epoch == 0
    assert p.isr == [leader, f1]
    beat(s, [leader], 3.0)
    s.expire(1.5 + TIMEOUT + 0.01)  # f1 died
    assert p.isr == [leader]
    s.expire(3.0 + TIMEOUT + 0.01)  # the leader died: offline, ISR still holds it
    assert p.leader is None and p.isr == [leader]


def test_epoch_bumps_on_every_leader_change() -> None:
    s = cluster(3)
    s.create_topic("t", 1, 3, None, 0.0)
    p = s.topics["t"].partitions[0]
    epochs = [p.leader_epoch]
    now = 0.0
    alive = set(p.replicas)
    for victim in list(p.replicas):
        alive.discard(victim)
        if p.leader != victim:
            continue
        beat(s, sorted(alive), now + 1.0)
        now += 1.0
        s.brokers[victim].deadline = now  # dies now
        s.expire(now)
        epochs.append(p.leader_epoch)
    assert epochs == sorted(set(epochs)) and len(epochs) >= 2


# --------------------------------------------------------------------------------------------------- alter_isr


def test_alter_isr_fencing_and_validation() -> None:
    s = cluster(3)
    s.create_topic("t", 1, 3, None, 0.0)
    p = s.topics["t"].partitions[0]
    leader, f1, f2 = p.replicas
    for who, epoch in ((f1, 0), (leader, 1)):
        with pytest.raises(PikafkaError) as e:
            s.alter_isr("t", 0, who, epoch, [who])
        assert code_of(e) is ErrorCode.FENCED_LEADER_EPOCH
    for bad in ([f1], [leader, 99], [leader, leader]):
        with pytest.raises(PikafkaError) as e:
            s.alter_isr("t", 0, leader, 0, bad)
        assert code_of(e) is ErrorCode.INVALID_REQUEST
    with pytest.raises(PikafkaError) as e:
        s.alter_isr("nope", 0, leader, 0, [leader])
    assert code_of(e) is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    v = s.metadata_version
    out = s.alter_isr("t", 0, leader, 0, [f2, leader])
    assert out.isr == [leader, f2]  # kept in replicas order
    assert s.metadata_version == v + 1
    s.alter_isr("t", 0, leader, 0, [leader, f2])
    assert s.metadata_version == v + 1  # no change, no bump


def test_alter_isr_rejects_dead_broker_joining() -> None:
    s = cluster(3)
    s.create_topic("t", 1, 3, None, 0.0)
    p = s.topics["t"].partitions[0]
    leader, f1, f2 = p.replicas
    beat(s, [leader, f2], 1.5)
    s.expire(TIMEOUT + 0.01)  # f1 died
    assert f1 not in p.isr
    with pytest.raises(PikafkaError) as e:
        s.alter_isr("t", 0, leader, 0, [leader, f1, f2])
    assert code_of(e) is ErrorCode.INVALID_REQUEST


# ------------------------------------------------------------------------------------------------------ topics


def test_create_topic_rules() -> None:
    s = cluster(3)
    t = s.create_topic("t", 4, 3, None, 0.0)
    assert t.config.min_insync_replicas == 2
    assert all(p.leader == p.replicas[0] and p.isr == p.replicas and p.leader_epoch == 0 for p in t.partitions)
    assert s.create_topic("u", 1, 2, None, 0.0).config.min_insync_replicas == 1
    assert s.create_topic("v", 1, 3, {"min_insync_replicas": 1}, 0.0).config.min_insync_replicas == 1
    cases = [
        (("t", 1, 1, None), ErrorCode.TOPIC_ALREADY_EXISTS),
        (("bad/name", 1, 1, None), ErrorCode.INVALID_TOPIC),
        (("w", 0, 1, None), ErrorCode.INVALID_PARTITIONS),
        (("w", 1025, 1, None), ErrorCode.INVALID_PARTITIONS),
        (("w", 1, 4, None), ErrorCode.INVALID_REPLICATION_FACTOR),
        (("w", 1, 0, None), ErrorCode.INVALID_REPLICATION_FACTOR),
        (("w", 1, 1, {"nope": 1}), ErrorCode.INVALID_CONFIG),
        (("w", 1, 1, {"min_insync_replicas": 2}), ErrorCode.INVALID_CONFIG),
    ]
    for args, code in cases:
        with pytest.raises(PikafkaError) as e:
            s.create_topic(*args, now=0.0)
        assert code_of(e) is code, args


def test_replication_factor_counts_only_live_brokers() -> None:
    s = cluster(3)
    beat(s, [1, 2], 1.5)
    s.expire(TIMEOUT + 0.01)  # broker 3 dead
    with pytest.raises(PikafkaError) as e:
        s.create_topic("t", 1, 3, None, TIMEOUT + 0.02)
    assert code_of(e) is ErrorCode.INVALID_REPLICATION_FACTOR
    assert "2 live brokers" in e.value.reason
    t = s.create_topic("t", 6, 2, None, TIMEOUT + 0.02)
    assert all(3 not in p.replicas for p in t.partitions)


def test_delete_topic_tombstones_and_recreate_clears_it() -> None:
    s = cluster(1)
    s.create_topic("t", 1, 1, None, 0.0)
    s.delete_topic("t")
    snap = s.snapshot()
    assert snap["topics"] == [] and snap["deleted_topics"] == ["t"]
    with pytest.raises(PikafkaError) as e:
        s.delete_topic("t")
    assert code_of(e) is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    s.create_topic("t", 1, 1, None, 0.0)
    assert s.snapshot()["deleted_topics"] == []


def test_leaders_balanced_across_topics() -> None:
    s = cluster(3)
    leaders: Counter[int] = Counter()
    for i in range(3):
        for p in s.create_topic(f"t{i}", 1, 2, None, 0.0).partitions:
            assert p.leader is not None
            leaders[p.leader] += 1
    assert sorted(leaders.values()) == [1, 1, 1]  # one single-partition topic led by each broker


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 12),
    partitions=st.integers(1, 64),
    data=st.data(),
)
def test_placement_spread(n: int, partitions: int, data: st.DataObject) -> None:
    r = data.draw(st.integers(1, n))
    start = data.draw(st.integers(0, 1000))
    brokers = sorted(data.draw(st.sets(st.integers(0, 100), min_size=n, max_size=n)))
    assignment = place_replicas(brokers, partitions, r, start)
    assert len(assignment) == partitions
    for replicas in assignment:
        assert len(replicas) == r and len(set(replicas)) == r and set(replicas) <= set(brokers)
    leaders = Counter(reps[0] for reps in assignment)
    counts = [leaders.get(b, 0) for b in brokers]
    assert max(counts) - min(counts) <= 1
    copies = Counter(b for reps in assignment for b in reps)
    all_counts = [copies.get(b, 0) for b in brokers]
    assert max(all_counts) - min(all_counts) <= r  # replicas spread too, not just leaders


# ------------------------------------------------------------------------------------------ property: elections


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_only_isr_members_at_election_time_become_leader(data: st.DataObject) -> None:
    """Random deaths, returns, ISR changes and offsets: every new leader was in the ISR just before."""
    n = data.draw(st.integers(2, 5), label="brokers")
    s = cluster(n)
    r = data.draw(st.integers(1, n), label="rf")
    s.create_topic("t", data.draw(st.integers(1, 4)), r, None, 0.0)
    now = 0.0
    incarnations = {i: f"inc-{i}" for i in range(1, n + 1)}
    for _step in range(data.draw(st.integers(1, 25))):
        now += data.draw(st.floats(0.1, 3.0))
        before = {p.partition: (p.leader, list(p.isr), p.leader_epoch) for p in s.topics["t"].partitions}
        action = data.draw(st.sampled_from(["beat", "expire", "register", "shrink", "expand"]))
        broker = data.draw(st.integers(1, n))
        if action == "beat":
            reports = [
                PartitionReport("t", p.partition, data.draw(st.integers(0, 1000)), p.leader_epoch)
                for p in s.topics["t"].partitions
                if broker in p.replicas
            ]
            try:
                s.heartbeat(broker, incarnations[broker], reports, now)
            except PikafkaError as e:
                assert e.code is ErrorCode.UNKNOWN_BROKER
        elif action == "expire":
            s.expire(now)
        elif action == "register":
            incarnations[broker] = f"inc-{broker}-{now}"
            s.register(broker, f"10.0.0.{broker}", 5683, None, incarnations[broker], "c1", now)
        else:
            part = s.topics["t"].partitions[data.draw(st.integers(0, len(s.topics["t"].partitions) - 1))]
            if part.leader is not None:
                if action == "shrink":
                    new = [part.leader] + [x for x in part.isr if x != part.leader and data.draw(st.booleans())]
                else:
                    new = [x for x in part.replicas if x in part.isr or s.is_alive(x)]
                s.alter_isr("t", part.partition, part.leader, part.leader_epoch, new)
        for p in s.topics["t"].partitions:
            old_leader, old_isr, old_epoch = before[p.partition]
            assert p.isr, "ISR never empty"
            if p.leader != old_leader:
                assert p.leader_epoch > old_epoch
                if p.leader is not None:
                    assert p.leader in old_isr, (p, before[p.partition])
                    assert s.is_alive(p.leader)
            if p.leader is not None:
                assert p.leader in p.isr
                assert set(p.isr) <= set(p.replicas)


# ---------------------------------------------------------------------------------------------- persistence


def test_to_json_from_json_round_trip() -> None:
    s = cluster(3)
    s.create_topic("a", 3, 2, {"retention_ms": 1000}, 0.0)
    s.create_topic("b", 1, 3, None, 0.0)
    beat(s, [1, 2, 3], 1.0, {1: [PartitionReport("a", 0, 42, 0)]})
    s.delete_topic("b")
    doc = json.loads(json.dumps(s.to_json()))  # survives real JSON (integer dict keys become text)
    r = ClusterState.from_json(doc, TIMEOUT, now=100.0)
    assert r.to_json() == s.to_json()
    snap, rsnap = s.snapshot(), r.snapshot()
    assert rsnap["topics"] == snap["topics"] and rsnap["deleted_topics"] == ["b"]
    assert rsnap["cluster_id"] == "c1" and rsnap["metadata_version"] == snap["metadata_version"]
    # brokers come back pending: not alive, holding their id for one session timeout
    assert all(not b["alive"] for b in rsnap["brokers"])
    assert all(b.deadline == 100.0 + TIMEOUT for b in r.brokers.values())


def test_restart_grace_no_election_while_brokers_heartbeat_back() -> None:
    s = cluster(2)
    s.create_topic("t", 2, 2, None, 0.0)
    leaders = [p.leader for p in s.topics["t"].partitions]
    r = ClusterState.from_json(s.to_json(), TIMEOUT, now=50.0)
    assert not r.expire(50.0 + TIMEOUT - 0.01)
    beat(r, [1, 2], 51.0)  # same incarnations: sessions resume without re-registering
    assert all(b.alive for b in r.brokers.values())
    assert [p.leader for p in r.topics["t"].partitions] == leaders
    assert [p.leader_epoch for p in r.topics["t"].partitions] == [0, 0]
    assert not r.expire(51.0 + TIMEOUT - 0.01)


def test_restart_grace_then_missing_broker_loses_leadership() -> None:
    s = cluster(2)
    s.create_topic("t", 2, 2, None, 0.0)
    r = ClusterState.from_json(s.to_json(), TIMEOUT, now=50.0)
    beat(r, [2], 51.0)
    r.expire(50.0 + TIMEOUT)  # broker 1 never came back
    assert not r.brokers[1].alive
    assert all(p.leader == 2 for p in r.topics["t"].partitions)
    assert all(p.leader_epoch == 1 for p in r.topics["t"].partitions if p.replicas[0] == 1)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("cluster_id"),
        lambda d: d.__setitem__("format", 99),
        lambda d: d["topics"][0].__setitem__("partitions", "x"),
        lambda d: d["topics"][0]["partitions"][0].__setitem__("leader", "one"),
        lambda d: d["brokers"][0].__setitem__("alive", "yes"),
        lambda d: d["topics"][0].__setitem__("config", {"retention_ms": 0}),
    ],
)
def test_from_json_rejects_malformed(mutate) -> None:
    s = cluster(1)
    s.create_topic("t", 1, 1, None, 0.0)
    doc = json.loads(json.dumps(s.to_json()))
    mutate(doc)
    with pytest.raises(ValueError):
        ClusterState.from_json(doc, TIMEOUT, now=0.0)
