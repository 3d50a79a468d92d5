"""Assignment strategies: every partition of a subscribed topic goes to exactly one subscribed member, balanced."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from pi_broker.group.assignors import choose_strategy, range_assign, round_robin_assign

members_st = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=8, unique=True)
counts_st = st.dictionaries(st.sampled_from(["t1", "t2", "t3"]), st.integers(0, 40), min_size=1)


def _all_partitions(counts: dict[str, int], topics: set[str]) -> Counter[tuple[str, int]]:
    return Counter((t, p) for t in topics for p in range(counts.get(t, 0)))


@given(members_st, counts_st)
def test_range_gives_every_partition_once_and_balances_each_topic(members, counts):
    subscriptions = {m: sorted(counts) for m in members}
    out = range_assign(subscriptions, counts)
    assigned = Counter(tp for tps in out.values() for tp in tps)
    assert assigned == _all_partitions(counts, set(counts))
    for topic in counts:
        sizes = [sum(1 for t, _ in out[m] if t == topic) for m in members]
        assert max(sizes) - min(sizes) <= 1


@given(members_st, counts_st)
def test_round_robin_gives_every_partition_once_and_balances_overall(members, counts):
    subscriptions = {m: sorted(counts) for m in members}
    out = round_robin_assign(subscriptions, counts)
    assigned = Counter(tp for tps in out.values() for tp in tps)
    assert assigned == _all_partitions(counts, set(counts))
    sizes = [len(out[m]) for m in members]
    assert max(sizes) - min(sizes) <= 1


@given(members_st, counts_st, st.data())
def test_partial_subscriptions_only_get_their_topics(members, counts, data):
    subscriptions = {m: data.draw(st.lists(st.sampled_from(sorted(counts)), min_size=1, unique=True)) for m in members}
    subscribed = {t for ts in subscriptions.values() for t in ts}
    for assign in (range_assign, round_robin_assign):
        out = assign(subscriptions, counts)
        assigned = Counter(tp for tps in out.values() for tp in tps)
        assert assigned == _all_partitions(counts, subscribed)
        for member, tps in out.items():
            assert all(t in subscriptions[member] for t, _ in tps)


def test_range_layout_is_contiguous():
    out = range_assign({"a": ["t"], "b": ["t"], "c": ["t"]}, {"t": 7})
    assert out == {"a": [("t", 0), ("t", 1), ("t", 2)], "b": [("t", 3), ("t", 4)], "c": [("t", 5), ("t", 6)]}


def test_strategy_choice_needs_a_common_one():
    assert choose_strategy([["roundrobin", "range"], ["range", "roundrobin"]]) == "roundrobin"
    assert choose_strategy([["range"], ["roundrobin"]]) is None
    assert choose_strategy([]) is None
