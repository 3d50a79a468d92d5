"""GroupMembership with a fake clock: joins, the rebalance barrier, heartbeats, expiry, generation fencing."""

from __future__ import annotations

import pytest

from pi_broker.group.membership import GroupMembership, GroupState
from pikafka.errors import ErrorCode, PikafkaError

COUNTS = {"t": 6}
SESSION = 3.0
REBALANCE = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0


def join(group: GroupMembership, clock: Clock, member: str = "") -> str:
    return group.join(member, "c", ["t"], ["range"], SESSION, REBALANCE, clock.now)


def stable_group(n: int) -> tuple[GroupMembership, Clock, list[str]]:
    group, clock = GroupMembership("g"), Clock()
    ids = [join(group, clock) for _ in range(n)]
    group.tick(clock.now, COUNTS)
    assert group.state is GroupState.STABLE
    return group, clock, ids


def owners(group: GroupMembership) -> dict[tuple[str, int], str]:
    out: dict[tuple[str, int], str] = {}
    for m in group.members.values():
        for tp in m.assignment:
            assert tp not in out, f"{tp} owned twice"
            out[tp] = m.member_id
    return out


def test_joins_complete_together_and_split_partitions():
    group, _, ids = stable_group(3)
    assert group.generation == 1
    results = [group.join_result(i) for i in ids]
    assert all(r is not None and r.generation == 1 for r in results)
    assert sorted(tp for r in results if r for tp in r.assignment) == [("t", p) for p in range(6)]
    assert len(owners(group)) == 6


def test_a_new_member_waits_until_every_member_rejoined():
    group, clock, ids = stable_group(2)
    newcomer = join(group, clock)
    group.tick(clock.now, COUNTS)
    assert group.state is GroupState.PREPARING_REBALANCE and group.join_result(newcomer) is None
    # The old members still own their partitions (and may commit them) until they rejoin.
    group.check_commit(ids[0], 1, group.members[ids[0]].assignment, clock.now)
    with pytest.raises(PikafkaError) as err:
        group.heartbeat(ids[0], 1, clock.now)
    assert err.value.code is ErrorCode.REBALANCE_IN_PROGRESS
    join(group, clock, ids[0])
    group.tick(clock.now, COUNTS)
    assert group.state is GroupState.PREPARING_REBALANCE
    join(group, clock, ids[1])
    group.tick(clock.now, COUNTS)
    assert group.state is GroupState.STABLE and group.generation == 2
    assert sorted(len(group.members[i].assignment) for i in [*ids, newcomer]) == [2, 2, 2]


def test_a_silent_member_expires_after_the_session_timeout_and_the_rest_rebalance():
    group, clock, ids = stable_group(3)
    clock.now += 2.0
    for i in ids[1:]:
        group.heartbeat(i, 1, clock.now)
    clock.now += 1.5  # ids[0] silent for 3.5 s > 3 s
    group.tick(clock.now, COUNTS)
    assert ids[0] not in group.members and group.state is GroupState.PREPARING_REBALANCE
    for i in ids[1:]:
        join(group, clock, i)
    group.tick(clock.now, COUNTS)
    assert group.generation == 2 and set(owners(group).values()) == set(ids[1:]) and len(owners(group)) == 6


def test_a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_deadline():
    group, clock, ids = stable_group(2)
    join(group, clock, ids[0])
    answers = []
    for _ in range(12):
        clock.now += 1.0
        try:  # ids[1] heartbeats (so it stays alive) but never rejoins
            group.heartbeat(ids[1], 1, clock.now)
        except PikafkaError as exc:
            answers.append(exc.code)
        group.tick(clock.now, COUNTS)
    assert ErrorCode.REBALANCE_IN_PROGRESS in answers and answers[-1] is ErrorCode.UNKNOWN_MEMBER_ID
    assert group.state is GroupState.STABLE and list(group.members) == [ids[0]]
    assert len(group.members[ids[0]].assignment) == 6


def test_old_generation_and_foreign_partitions_cannot_commit():
    group, clock, ids = stable_group(2)
    mine = group.members[ids[0]].assignment
    theirs = group.members[ids[1]].assignment
    with pytest.raises(PikafkaError) as err:
        group.check_commit(ids[0], 0, mine, clock.now)
    assert err.value.code is ErrorCode.ILLEGAL_GENERATION
    with pytest.raises(PikafkaError) as err:
        group.check_commit(ids[0], 1, theirs, clock.now)
    assert err.value.code is ErrorCode.ILLEGAL_GENERATION
    with pytest.raises(PikafkaError) as err:
        group.check_commit("nobody", 1, mine, clock.now)
    assert err.value.code is ErrorCode.UNKNOWN_MEMBER_ID


def test_a_member_that_rejoined_can_no_longer_commit_the_old_generation():
    group, clock, ids = stable_group(2)
    mine = group.members[ids[0]].assignment
    join(group, clock, ids[0])
    with pytest.raises(PikafkaError) as err:
        group.check_commit(ids[0], 1, mine, clock.now)
    assert err.value.code is ErrorCode.REBALANCE_IN_PROGRESS


def test_leave_rebalances_and_the_last_leave_empties_the_group():
    group, clock, ids = stable_group(2)
    group.leave(ids[0], clock.now)
    assert group.state is GroupState.PREPARING_REBALANCE
    join(group, clock, ids[1])
    group.tick(clock.now, COUNTS)
    assert len(group.members[ids[1]].assignment) == 6
    group.leave(ids[1], clock.now)
    assert group.state is GroupState.EMPTY
    group.check_commit("", -1, [], clock.now)  # administrative commits only while empty


def test_administrative_commit_is_refused_while_members_live():
    group, clock, _ = stable_group(1)
    with pytest.raises(PikafkaError) as err:
        group.check_commit("", -1, [], clock.now)
    assert err.value.code is ErrorCode.NON_EMPTY_GROUP


def test_a_taken_over_group_waits_for_its_members_and_continues_the_generation():
    group, clock = GroupMembership("g", first_generation=7, initial_delay_s=3.0), Clock()
    a = join(group, clock)
    group.tick(clock.now, COUNTS)
    assert group.join_result(a) is None  # the others get 3 s to come back
    clock.now += 1.0
    b = join(group, clock)
    clock.now += 2.1
    group.tick(clock.now, COUNTS)
    assert group.generation == 8 and {len(group.members[i].assignment) for i in (a, b)} == {3}


def test_bad_joins_are_refused():
    group, clock = GroupMembership("g"), Clock()
    with pytest.raises(PikafkaError):
        group.join("", "c", [], ["range"], SESSION, REBALANCE, clock.now)
    with pytest.raises(PikafkaError):
        group.join("", "c", ["t"], ["sticky"], SESSION, REBALANCE, clock.now)
    join(group, clock)
    with pytest.raises(PikafkaError):
        group.join("", "c", ["t"], ["roundrobin"], SESSION, REBALANCE, clock.now)


def test_a_late_reader_of_its_join_answer_still_gets_it():
    group, clock, ids = stable_group(1)
    join(group, clock)  # a second member starts a new rebalance right after the first completed
    assert group.join_result(ids[0]) is not None
