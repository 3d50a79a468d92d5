"""PendingProduce and AckQueue: produce acknowledgements released by offset, failed once, timed out once."""

from __future__ import annotations

import asyncio

import pytest

from pi_broker.pending_acks import AckQueue, PendingProduce
from pikafka.errors import ErrorCode, PikafkaError


def timed_out() -> PikafkaError:
    return PikafkaError(ErrorCode.REQUEST_TIMED_OUT, "not durable in time")


class Outcomes:
    """Collects what callbacks were told, to check that each request is answered exactly once."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def __call__(self, outcome: object) -> None:
        self.seen.append(outcome)


def pending(value: object = "ok", **kwargs: object) -> PendingProduce[object]:
    return PendingProduce(value, on_timeout=timed_out, **kwargs)  # type: ignore[arg-type]


def armed_over_two_partitions() -> tuple[AckQueue, AckQueue, Outcomes]:
    """One request waiting at offset 3 of a first partition and offset 7 of a second."""
    first, second = AckQueue(), AckQueue()
    request, outcome = pending(), Outcomes()
    first.add(3, request)
    second.add(7, request)
    request.arm(10, outcome)
    return first, second, outcome


async def test_a_bound_releases_exactly_the_offsets_below_it() -> None:
    queue = AckQueue()
    outcomes = [Outcomes() for _ in range(3)]
    for offset, outcome in zip((0, 5, 9), outcomes, strict=True):
        request = pending(offset)
        queue.add(offset, request)
        request.arm(10, outcome)
    queue.release_below(5)
    assert [o.seen for o in outcomes] == [[0], [], []]
    queue.release_below(10)
    assert [o.seen for o in outcomes] == [[0], [5], [9]]
    assert len(queue) == 0


async def test_a_request_over_two_partitions_waits_for_both() -> None:
    first, second, outcome = armed_over_two_partitions()
    first.release_below(4)
    assert outcome.seen == []
    second.release_below(8)
    assert outcome.seen == ["ok"]


async def test_an_error_on_one_partition_fails_the_request_once() -> None:
    first, second, outcome = armed_over_two_partitions()
    error = PikafkaError(ErrorCode.STORAGE_ERROR, "fsync failed")
    first.fail_all(error)
    second.release_below(100)
    second.fail_all(PikafkaError(ErrorCode.STORAGE_ERROR, "again"))
    assert outcome.seen == [error]


async def test_the_deadline_answers_with_the_timeout_error_and_a_late_release_is_ignored() -> None:
    queue = AckQueue()
    request, outcome = pending(), Outcomes()
    queue.add(0, request)
    request.arm(0.01, outcome)
    await asyncio.sleep(0.05)
    assert len(outcome.seen) == 1 and isinstance(outcome.seen[0], PikafkaError)
    assert outcome.seen[0].code is ErrorCode.REQUEST_TIMED_OUT
    queue.release_below(1)
    assert len(outcome.seen) == 1


async def test_a_release_cancels_the_deadline() -> None:
    queue = AckQueue()
    request, outcome = pending(), Outcomes()
    queue.add(0, request)
    request.arm(0.02, outcome)
    queue.release_below(1)
    await asyncio.sleep(0.05)
    assert outcome.seen == ["ok"]


async def test_the_check_can_refuse_a_request_whose_records_became_durable() -> None:
    refusal = PikafkaError(ErrorCode.NOT_ENOUGH_REPLICAS, "the ISR shrank")

    def check() -> None:
        raise refusal

    queue = AckQueue()
    request, outcome = pending(check=check), Outcomes()
    queue.add(0, request)
    request.arm(10, outcome)
    queue.release_below(1)
    assert outcome.seen == [refusal]
    with pytest.raises(PikafkaError):
        pending(check=check).settle_now()  # no partition held it (acks=0, lazy topics): the check still runs


async def test_a_retry_queued_behind_later_offsets_is_released_when_they_are() -> None:
    queue = AckQueue()
    later, retry = pending("later"), pending("retry")
    seen_later, seen_retry = Outcomes(), Outcomes()
    queue.add(10, later)
    queue.add(2, retry)  # a duplicate answered with its original, lower offsets
    later.arm(10, seen_later)
    retry.arm(10, seen_retry)
    queue.release_below(5)
    assert seen_retry.seen == []  # behind offset 10; the bound only grows, so it is not lost, only later
    queue.release_below(11)
    assert (seen_later.seen, seen_retry.seen) == (["later"], ["retry"])


async def test_an_outcome_reached_before_arm_is_delivered_by_arm() -> None:
    queue = AckQueue()
    request, outcome = pending(), Outcomes()
    queue.add(0, request)
    queue.release_below(1)
    request.arm(10, outcome)
    assert outcome.seen == ["ok"]


async def test_requests_already_answered_are_dropped_from_the_front() -> None:
    queue = AckQueue()
    stale = pending()
    queue.add(0, stale)
    stale.arm(0.001, Outcomes())
    await asyncio.sleep(0.02)
    queue.add(1, pending())
    assert len(queue) == 1


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    queue = AckQueue()

    def broken(outcome: object) -> None:
        raise RuntimeError("the client's pipe is gone")

    first, second, outcome = pending(), pending(), Outcomes()
    queue.add(0, first)
    queue.add(1, second)
    first.arm(10, broken)
    second.arm(10, outcome)
    queue.release_below(2)
    assert outcome.seen == ["ok"]


async def test_wait_returns_the_value_and_raises_errors() -> None:
    queue = AckQueue()
    request = pending("offsets")
    queue.add(0, request)
    asyncio.get_running_loop().call_soon(queue.release_below, 1)
    assert await request.wait(10) == "offsets"
    failing = pending()
    queue.add(1, failing)
    asyncio.get_running_loop().call_soon(queue.fail_all, PikafkaError(ErrorCode.STORAGE_ERROR, "disk"))
    with pytest.raises(PikafkaError):
        await failing.wait(10)


async def test_a_cancelled_waiter_is_skipped() -> None:
    queue = AckQueue()
    request = pending()
    queue.add(0, request)
    task = asyncio.create_task(request.wait(10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert request.done
    queue.release_below(1)  # nothing to deliver to, nothing raised
