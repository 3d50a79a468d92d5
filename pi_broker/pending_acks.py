"""Produce requests waiting for their acknowledgement, released by offset instead of by polling.

A produce with acks >= 1 is answered once its records are durable: fsynced (acks=1), or below the high watermark,
which on a cluster leader means fsynced on every in-sync replica (acks=all). Each partition keeps its waiting
requests in offset order (AckQueue); when the flushed offset or the high watermark moves, the partition pops exactly
the entries now covered and each request's callback runs right there. No task is woken to re-check a condition and
go back to sleep, no per-request future is shielded and no per-request timeout context is entered: on a Pi every one
of those costs showed up in the profile of one-record produces (docs/benchmarks-history.md).

A request may span several partitions (PendingProduce counts them down) and has one deadline (a single timer). An
error on any partition (a failed fsync, a deleted partition, a lost leadership) fails the whole request once;
entries of a request that already finished are skipped when their partition gets to them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from pikafka.errors import PikafkaError

log = logging.getLogger(__name__)

T = TypeVar("T")


class AckWaiter(Protocol):
    """What an AckQueue holds (a PendingProduce of any result type)."""

    @property
    def done(self) -> bool: ...

    def expect(self) -> None: ...

    def release(self) -> None: ...

    def fail(self, error: PikafkaError) -> None: ...


class PendingProduce(Generic[T]):
    """One request's acknowledgement: `value` once every partition it waits on released it, else the first error.

    `check` runs just before success and may raise PikafkaError to turn it into a refusal (acks=all re-checks the
    ISR size); `on_timeout` builds the error given when the deadline passes first.
    """

    __slots__ = ("_callback", "_check", "_on_timeout", "_outcome", "_remaining", "_timer", "done", "value")

    def __init__(
        self,
        value: T,
        *,
        check: Callable[[], None] | None = None,
        on_timeout: Callable[[], PikafkaError],
    ) -> None:
        self.value = value
        self._remaining = 0
        self._callback: Callable[[T | PikafkaError], None] | None = None
        self._outcome: T | PikafkaError | None = None  # kept when the request finished before arm()
        self._timer: asyncio.TimerHandle | None = None
        self._check = check
        self._on_timeout = on_timeout
        self.done = False

    @property
    def waiting(self) -> bool:
        """Whether any partition still holds this request (False: answer at once with `settle_now()`)."""
        return self._remaining > 0

    def expect(self) -> None:
        """One more partition will release this request (called as it is queued there)."""
        self._remaining += 1

    def arm(self, timeout_s: float, callback: Callable[[T | PikafkaError], None]) -> None:
        """Start the deadline and say where the outcome goes; call once, after every partition was queued."""
        if self.done:
            if self._outcome is not None:
                outcome, self._outcome = self._outcome, None
                callback(outcome)
            return
        self._callback = callback
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._expire)

    async def wait(self, timeout_s: float) -> T:
        """The outcome, awaited (for callers that are coroutines anyway: topic-data PUTs, the offsets store)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def deliver(outcome: T | PikafkaError) -> None:
            if future.done():
                return
            if isinstance(outcome, PikafkaError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.arm(timeout_s, deliver)
        try:
            return await future
        except asyncio.CancelledError:
            self.abandon()  # partitions skip this entry from now on
            raise

    def abandon(self) -> None:
        """Nobody waits for the outcome any more (the client went away): answer nothing, skip the queued entries."""
        self.done = True
        self._callback = None
        self._cancel_timer()

    def settle_now(self) -> T:
        """The outcome of a request no partition holds (acks=0, lazily flushed topics, already-durable retries)."""
        if self._check is not None:
            self._check()
        self.done = True
        return self.value

    def release(self) -> None:
        """One partition's condition now holds for this request."""
        if self.done:
            return
        self._remaining -= 1
        if self._remaining > 0:
            return
        try:
            if self._check is not None:
                self._check()
        except PikafkaError as exc:
            self._finish(exc)
            return
        self._finish(self.value)

    def fail(self, error: PikafkaError) -> None:
        if not self.done:
            self._finish(error)

    def _expire(self) -> None:
        self._timer = None
        if not self.done:
            self._finish(self._on_timeout())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self, outcome: T | PikafkaError) -> None:
        self.done = True
        self._cancel_timer()
        callback, self._callback = self._callback, None
        if callback is None:
            self._outcome = outcome  # finished before arm(): arm() delivers it
            return
        try:
            callback(outcome)
        except Exception:
            # The callback answers one client; its failure must not stop the partition releasing the others.
            log.exception("acknowledging a produce failed")


class AckQueue:
    """Requests waiting for one partition's bound (flushed offset or high watermark) to pass an offset.

    Entries are appended as records are written, so offsets arrive in order; the one exception, a retried batch
    answered with its original (lower) offsets, is merely released a little later, when everything queued before it
    is covered, which is correct because the bound only grows.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: deque[tuple[int, AckWaiter]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, offset: int, pending: AckWaiter) -> None:
        entries = self._entries
        while entries and entries[0][1].done:
            entries.popleft()  # timed out or abandoned at the front: nothing will release them any sooner
        pending.expect()
        entries.append((offset, pending))

    def release_below(self, bound: int) -> None:
        """Release every request whose offset is below `bound`."""
        entries = self._entries
        while entries and entries[0][0] < bound:
            entries.popleft()[1].release()

    def fail_all(self, error: PikafkaError) -> None:
        entries, self._entries = self._entries, deque()
        for _, pending in entries:
            pending.fail(error)
