"""FsyncThread: the one thread that runs the group commit's fsyncs, so the event loop never blocks on the disk.

An SD card takes milliseconds per fsync; the loop must keep serving meanwhile. A dedicated thread (rather than
asyncio.to_thread) hands each finished round straight back to a loop callback with one call_soon_threadsafe, instead
of chaining a concurrent future into an asyncio future into a task wake-up: on a busy 2-core Pi every hop is a loop
iteration that the waiting producers sit through. The thread runs as little Python as possible, because every
Python step it takes contends with the loop for the GIL.

A busy loop only runs that callback after the whole iteration it is in, which measured as long as the fsync itself.
So the thread also leaves each finished round in `finished`, where the group commit picks it up as soon as any
producer writes (see GroupCommit.appended); the callback then finds nothing left to do.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence

from pi_broker.log.flush_ticket import FlushTicket

log = logging.getLogger(__name__)

FinishedRound = tuple[Sequence[FlushTicket], list[Exception | None]]

_STOP = None


class FsyncThread:
    def __init__(self, loop: asyncio.AbstractEventLoop, on_done: Callable[[], None]) -> None:
        self._loop = loop
        self._on_done = on_done
        # deque: appends and pops are atomic, so the thread and the loop share it without a lock
        self.finished: deque[FinishedRound] = deque()
        self._jobs: queue.SimpleQueue[Sequence[FlushTicket] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pikafka-fsync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, tickets: Sequence[FlushTicket]) -> None:
        """fsync every ticket on the thread; the round then appears in `finished` as (tickets, errors), one error per
        ticket (None for a ticket that synced), and `on_done()` is scheduled on the loop."""
        self._jobs.put(tickets)

    def stop(self) -> None:
        """Let the thread finish what it was given and exit (the caller waited for the last round first)."""
        if self._thread.is_alive():
            self._jobs.put(_STOP)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            tickets = self._jobs.get()
            if tickets is _STOP:
                return
            self.finished.append((tickets, _sync_all(tickets)))
            try:
                self._loop.call_soon_threadsafe(self._on_done)
            except RuntimeError:
                log.error("the event loop closed before an fsync round was reported; stopping the fsync thread")
                return


def _sync_all(tickets: Sequence[FlushTicket]) -> list[Exception | None]:
    """fsync every ticket, collecting failures rather than stopping at the first."""
    errors: list[Exception | None] = []
    for ticket in tickets:
        try:
            ticket.sync()
            errors.append(None)
        except Exception as exc:  # OSError from the disk; anything else is a bug that must not hang producers
            errors.append(exc)
    return errors
