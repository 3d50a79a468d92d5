"""IsrTracker: the leader's caught-up rule, shrink and expand proposals, and the ISR the high watermark waits for."""

from __future__ import annotations

from pi_broker.isr_tracker import UNKNOWN_OFFSET, IsrTracker


def test_high_watermark_bound_waits_for_every_isr_follower() -> None:
    t = IsrTracker(1, (1, 2, 3), (1, 2, 3), now=0.0)
    assert t.replicated_bound() == UNKNOWN_OFFSET  # nobody fetched yet: nothing is known to be replicated
    t.record_fetch(2, 10, leader_end=10, now=0.1)
    assert t.replicated_bound() == UNKNOWN_OFFSET
    t.record_fetch(3, 7, leader_end=10, now=0.1)
    assert t.replicated_bound() == 7
    alone = IsrTracker(1, (1, 2), (1,), now=0.0)
    assert alone.replicated_bound() is None


def test_a_follower_that_stops_catching_up_is_proposed_for_removal() -> None:
    t = IsrTracker(1, (1, 2, 3), (1, 2, 3), now=0.0)
    t.record_fetch(2, 5, leader_end=5, now=0.5)
    t.record_fetch(3, 5, leader_end=5, now=0.5)
    assert t.shrink_proposal(now=1.0, lag_max_s=1.0) is None
    t.record_fetch(2, 9, leader_end=9, now=2.0)  # 2 keeps up; 3 falls silent
    assert t.shrink_proposal(now=2.0, lag_max_s=1.0) == (1, 2)
    t.begin_change((1, 2))
    assert t.shrink_proposal(now=3.0, lag_max_s=1.0) is None  # one change at a time
    assert t.maximal_isr == (1, 2, 3)  # removal not accepted yet: 3 still counts for the high watermark


def test_kafkas_rule_a_follower_behind_a_moving_log_end_is_still_caught_up() -> None:
    t = IsrTracker(1, (1, 2), (1, 2), now=0.0)
    t.record_fetch(2, 5, leader_end=8, now=1.0)  # behind: not caught up at 1.0
    t.record_fetch(2, 8, leader_end=12, now=2.0)  # reached the end as it was at its previous fetch
    assert t.followers[2].caught_up_at == 1.0
    assert t.shrink_proposal(now=1.9, lag_max_s=1.0) is None
    assert t.shrink_proposal(now=2.1, lag_max_s=1.0) == (1,)  # a second past its last catch-up


def test_a_follower_joins_once_it_holds_everything_below_the_high_watermark_in_this_epoch() -> None:
    t = IsrTracker(1, (1, 2, 3), (1, 2), now=0.0)
    t.record_fetch(3, 4, leader_end=10, now=0.1)
    assert t.expand_proposal(3, high_watermark=8, epoch_start=0) is None
    t.record_fetch(3, 8, leader_end=10, now=0.2)
    assert t.expand_proposal(3, high_watermark=8, epoch_start=9) is None  # not yet into this leader's epoch
    assert t.expand_proposal(3, high_watermark=8, epoch_start=5) == (1, 2, 3)
    t.begin_change((1, 2, 3))
    assert t.maximal_isr == (1, 2, 3)  # counted for the high watermark while the zookeeper decides
    t.pending = None
    t.adopt((1, 2, 3), now=1.0)
    assert t.isr == (1, 2, 3)
