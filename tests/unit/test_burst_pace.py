"""BurstPace: the bound that splits a burst follows the gaps between appends, within its floor and ceiling."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pi_broker.burst_pace import BurstPace


def appends(pace: BurstPace, gap_s: float, count: int, start: float = 100.0) -> float:
    """`count` appends `gap_s` apart, all joining one round; returns the time of the last."""
    now = start
    for i in range(count):
        now = start + i * gap_s
        pace.appended(now)
    return now


def test_the_bound_starts_at_the_floor():
    assert BurstPace(0.0005, 0.002, 6).bound_s == pytest.approx(0.0005)


def test_a_fast_pace_keeps_the_floor():
    pace = BurstPace(0.0005, 0.002, 6)
    appends(pace, 0.00007, 200)  # 70 µs a produce: six of them take 0.42 ms
    assert pace.gap_s == pytest.approx(0.00007, rel=0.01)
    assert pace.bound_s == pytest.approx(0.0005)


def test_a_middle_pace_gives_about_six_requests_worth():
    pace = BurstPace(0.0005, 0.002, 6)
    appends(pace, 0.0002, 200)
    assert pace.bound_s == pytest.approx(0.0012, rel=0.01)


def test_a_slow_pace_reaches_the_ceiling_and_no_further():
    pace = BurstPace(0.0005, 0.002, 6)
    appends(pace, 0.0004, 200)  # a Pi's pace and then some
    assert pace.bound_s == pytest.approx(0.002, rel=1e-3)
    appends(pace, 0.05, 200, start=200.0)
    assert pace.bound_s <= 0.002


def test_gaps_spanning_a_round_are_not_the_pace():
    pace = BurstPace(0.0005, 0.002, 6)
    now = 100.0
    for _ in range(100):  # bursts of two appends 50 µs apart, each followed by a round and a 5 ms pause
        pace.appended(now)
        pace.appended(now + 0.00005)
        pace.round_began()
        now += 0.005
    assert pace.gap_s == pytest.approx(0.00005, rel=0.01)
    assert pace.bound_s == pytest.approx(0.0005)


def test_one_long_gap_counts_only_up_to_the_ceiling_share():
    pace = BurstPace(0.0005, 0.002, 6)
    last = appends(pace, 0.00007, 200)
    pace.appended(last + 1.0)  # a second's garbage collection inside a burst
    assert pace.gap_s <= 0.00007 + (0.002 / 6) / 16 + 1e-12
    appends(pace, 0.00007, 100, start=last + 2.0)
    assert pace.bound_s == pytest.approx(0.0005)


def test_a_ceiling_below_the_floor_wins():
    pace = BurstPace(0.0005, 0.0, 6)
    appends(pace, 0.001, 10)
    assert pace.bound_s == 0.0


@pytest.mark.parametrize(("floor_s", "ceiling_s", "requests"), [(-0.1, 0.002, 6), (0.0005, -1.0, 6), (0.0, 1.0, 0)])
def test_nonsense_settings_are_refused(floor_s: float, ceiling_s: float, requests: int):
    with pytest.raises(ValueError):
        BurstPace(floor_s, ceiling_s, requests)


@given(
    st.lists(st.floats(min_value=0.0, max_value=10.0), max_size=200),
    st.lists(st.booleans(), max_size=200),
)
def test_the_bound_always_lies_within_floor_and_ceiling(gaps: list[float], round_after: list[bool]):
    pace = BurstPace(0.0005, 0.002, 6)
    now = 0.0
    for i, gap in enumerate(gaps):
        now += gap
        pace.appended(now)
        if i < len(round_after) and round_after[i]:
            pace.round_began()
        assert 0.0005 <= pace.bound_s <= 0.002
