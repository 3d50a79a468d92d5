"""FsyncPlacement: the loop fsyncs itself only while the disk has shown itself fast (a fake clock, no disk)."""

from __future__ import annotations

import logging

import pytest

from pi_broker.fsync_placement import FsyncPlacement


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def placement(clock: FakeClock, loop_max_s: float = 0.002) -> FsyncPlacement:
    return FsyncPlacement(loop_max_s, min_samples=4, stall_s=0.05, stall_hold_s=60.0, clock=clock)


def test_starts_on_the_threads_and_moves_to_the_loop_once_enough_fast_rounds_were_timed():
    p = placement(FakeClock())
    for _ in range(3):
        p.record(0.0004)
        assert not p.on_loop  # three rounds prove nothing yet
    p.record(0.0004)
    assert p.on_loop
    assert p.mean_s == pytest.approx(0.0004)


def test_a_slow_disk_stays_on_the_threads():
    p = placement(FakeClock())
    for _ in range(100):
        p.record(0.008)  # an SD card
    assert not p.on_loop


def test_zero_budget_never_fsyncs_on_the_loop():
    p = placement(FakeClock(), loop_max_s=0.0)
    for _ in range(100):
        p.record(0.00001)
    assert not p.on_loop


@pytest.mark.parametrize("written_bytes", [0, 64 * 1024])  # 64 KiB at 4 MiB/s excuse only 15.6 ms of the 300
def test_a_stall_moves_rounds_to_the_threads_at_once_and_for_the_hold_time(written_bytes: int):
    clock = FakeClock()
    p = placement(clock)
    for _ in range(10):
        p.record(0.0004)
    assert p.on_loop
    p.record(0.3, written_bytes)  # one fsync held the loop for 300 ms
    assert not p.on_loop
    for _ in range(50):
        clock.now += 1.0
        p.record(0.0004)
    assert not p.on_loop  # 50 s after the stall: still on the threads
    clock.now += 11.0
    p.record(0.0004)
    assert p.on_loop


def test_each_further_stall_on_the_loop_doubles_the_hold():
    clock = FakeClock()
    p = placement(clock)

    def stall() -> None:
        p.record(0.3)
        for _ in range(60):
            p.record(0.0004)  # fast again at once: only the hold keeps the rounds on the threads

    def back_on_loop_after(seconds: float) -> bool:
        clock.now += seconds
        p.record(0.0004)
        return p.on_loop

    for _ in range(10):
        p.record(0.0004)
    stall()  # the first stall on the loop: a minute on the threads
    assert not back_on_loop_after(59.0) and back_on_loop_after(2.0)
    stall()  # the second: two minutes
    assert not back_on_loop_after(119.0) and back_on_loop_after(2.0)
    stall()  # the third: four
    assert not back_on_loop_after(239.0) and back_on_loop_after(2.0)
    stall()
    stall()  # a stall on the threads restarts the hold without lengthening it
    assert not back_on_loop_after(479.0) and back_on_loop_after(2.0)


def test_the_mean_must_pass_twice_the_budget_to_leave_the_loop():
    p = placement(FakeClock())
    for _ in range(10):
        p.record(0.0005)
    assert p.on_loop
    for _ in range(100):
        p.record(0.003)  # over the 2 ms budget, under twice it: not worth a move back and forth
    assert p.on_loop
    for _ in range(100):
        p.record(0.006)
    assert not p.on_loop
    for _ in range(100):
        p.record(0.003)
    assert not p.on_loop  # and back only once the mean is within the budget again
    for _ in range(100):
        p.record(0.001)
    assert p.on_loop


def test_each_move_is_logged_once(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="pi_broker.fsync_placement")
    p = placement(FakeClock())
    for _ in range(20):
        p.record(0.0004)
    p.record(0.2)
    p.record(0.2)
    moves = [r.getMessage() for r in caplog.records]
    assert len(moves) == 2, moves
    assert moves[0].startswith("fsyncs move to the event loop")
    assert moves[1].startswith("fsyncs move to the fsync threads: last round 200.0 ms")


def test_a_stall_on_the_threads_is_logged_once_a_hold(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="pi_broker.fsync_placement")
    clock = FakeClock()
    p = placement(clock)
    p.record(0.3, written_bytes=512)  # on the threads from the start: no move to log, but the hold it starts
    for _ in range(30):
        clock.now += 1.0
        p.record(0.2)  # the disk stalls every second: each re-arms the hold, none is news
    clock.now += 61.0
    p.record(0.25)  # the first after a whole quiet hold: news again
    stalls = [r.getMessage() for r in caplog.records]
    assert stalls == [
        "an fsync round stalled: 300.0 ms for 512 bytes; fsyncs stay on the fsync threads for at least 60 s",
        "an fsync round stalled: 250.0 ms for 0 bytes; fsyncs stay on the fsync threads for at least 60 s",
    ]
    assert not p.on_loop


def test_a_long_round_that_had_much_to_write_is_no_stall():
    clock = FakeClock()
    p = placement(clock)  # stall_s 50 ms; the allowance is 4 MiB/s
    p.record(0.12, written_bytes=1024 * 1024)  # 1 MiB in 120 ms: within 50 ms + 250 ms
    for _ in range(60):  # enough for the running mean to forget the big round
        p.record(0.0004)
    assert p.on_loop  # no hold: the small rounds after the big one went to the loop as soon as the mean allowed


def test_a_long_round_with_little_to_write_is_a_stall():
    clock = FakeClock()
    p = placement(clock)
    p.record(0.12, written_bytes=64 * 1024)  # 64 KiB allows 50 + 15.6 ms; it took 120
    for _ in range(60):
        clock.now += 0.5
        p.record(0.0004)
    assert p.mean_s < 0.002
    assert not p.on_loop  # held on the threads by the stall, 30 s after it, though the mean is back in budget
