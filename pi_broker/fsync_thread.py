"""FsyncThreads: the threads that run the group commit's fsyncs, so the event loop need not block on the disk.

An SD card takes milliseconds per fsync; the loop must keep serving meanwhile. Dedicated threads (rather than
asyncio.to_thread) hand each finished round straight back to a loop callback with one call_soon_threadsafe, instead
of chaining a concurrent future into an asyncio future into a task wake-up: on a busy machine every hop is a loop
iteration that the waiting producers sit through. The threads run as little Python as possible, because every step
they take contends with the loop for the GIL.

A busy loop only runs that callback after the whole iteration it is in, which measured as long as the fsync itself.
So each finished round is also left in `finished`, where the group commit picks it up as soon as any producer writes
(see GroupCommit.appended); the callback then finds nothing left to do.

There is one thread per round the group commit lets run at once (two): the second round's fsync starts while the
first is still in the kernel instead of after a round trip through the loop. A helper process instead of threads
(no GIL shared) measured no faster on a 2-core machine (2,484 against 2,450 one-record produces/s), so threads it is:
no second interpreter's memory, nothing to reap.

On a fast disk the group commit fsyncs on the loop's own thread instead (fsync_placement.py): `sync_here` runs a
round exactly as a thread would, timed the same way, and leaves it in `finished` for the caller to collect.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from pi_broker.log.flush_ticket import FlushTicket

log = logging.getLogger(__name__)

# (round id, its tickets, one error or None per ticket, seconds its fsyncs took)
FinishedRound = tuple[int, Sequence[FlushTicket], list[Exception | None], float]

_STOP = None


class FsyncThreads:
    """`count` threads taking rounds from one queue, so that many rounds may be in flight at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_done: Callable[[], None], count: int) -> None:
        self._loop = loop
        self._on_done = on_done
        # deque: appends and pops are atomic, so the threads and the loop share it without a lock
        self.finished: deque[FinishedRound] = deque()
        self._jobs: queue.SimpleQueue[tuple[int, Sequence[FlushTicket]] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"pikafka-fsync-{i}", daemon=True) for i in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, round_id: int, tickets: Sequence[FlushTicket]) -> None:
        """fsync every ticket on a thread; the round then appears in `finished` as (round_id, tickets, errors,
        seconds), one error per ticket (None for a ticket that synced), and `on_done()` is scheduled on the loop."""
        self._jobs.put((round_id, tickets))

    def sync_here(self, round_id: int, tickets: Sequence[FlushTicket]) -> None:
        """fsync every ticket on the calling thread (the loop's); the round is in `finished` on return, and no
        `on_done()` is scheduled: the caller collects it."""
        self.finished.append(_sync_round(round_id, tickets))

    def stop(self) -> None:
        """Let the threads finish what they were given and exit (the caller waited for the last round first)."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            self.finished.append(_sync_round(*job))
            try:
                self._loop.call_soon_threadsafe(self._on_done)
            except RuntimeError:
                log.error("the event loop closed before an fsync round was reported; stopping the fsync thread")
                return


def _sync_round(round_id: int, tickets: Sequence[FlushTicket]) -> FinishedRound:
    """fsync every ticket, collecting failures rather than stopping at the first, and time it all."""
    started = time.monotonic()
    errors: list[Exception | None] = []
    for ticket in tickets:
        try:
            ticket.sync()
            errors.append(None)
        except Exception as exc:  # OSError from the disk; anything else is a bug that must not hang producers
            errors.append(exc)
    return round_id, tickets, errors, time.monotonic() - started
