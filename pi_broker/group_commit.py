"""Group commit: many producers' batches share one fsync.

An SD card manages a few hundred fsyncs a second at best, so fsyncing each batch before its acknowledgement would
cap the broker at that many batches per second whatever their size. Instead a produce appends (a plain write), tells
the group commit its partition is dirty and queues its acknowledgement on the partition (pending_acks.py). A round
takes a flush ticket from every dirty partition and fsyncs them all in one go on the fsync thread; while that runs,
new appends pile up for the next round, which starts the moment the previous one reports back. When a round reports
back, each partition's flushed offset and high watermark advance and the acknowledgements they cover go out.

Everything here is a loop callback, not a task: a round begins at the end of the loop iteration that dirtied the
first partition (so the requests read in that iteration share it) and completes as soon as the loop notices the
fsync thread finished it, either in the callback the thread schedules or, sooner on a busy broker, in the next
produce's call to appended(); completing a round answers the producers it made durable directly.

Topics with flush_interval_ms > 0 trade durability for fewer fsyncs: their producers are acknowledged after the
write, and they are fsynced once the oldest unflushed write is that many milliseconds old. Their high watermark still
only advances after the fsync, so consumers never see what a power cut could take back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

from pi_broker.fsync_thread import FsyncThread
from pi_broker.log.flush_ticket import FlushTicket
from pi_broker.partition import Partition
from pikafka.errors import ErrorCode, PikafkaError

log = logging.getLogger(__name__)


class GroupCommit:
    def __init__(self) -> None:
        self._urgent: set[Partition] = set()
        self._lazy: dict[Partition, float] = {}  # partition -> monotonic deadline for its fsync
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._lazy_timer_at = float("inf")
        self._in_flight: dict[FlushTicket, Partition] = {}  # the running round (empty: none runs)
        self._round_scheduled = False
        self._round_over: asyncio.Future[None] | None = None  # made on demand by those who wait for a round's end
        self._thread: FsyncThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.rounds = 0  # fsync rounds run; tests and stats read it

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = FsyncThread(self._loop, self._collect)
        self._thread.start()

    def appended(self, partition: Partition, *, urgent: bool = False) -> None:
        """Note a write to `partition`; its high watermark will advance once it is fsynced. `urgent`: fsync in the
        next round whatever the topic's flush_interval_ms (a follower must be durable before it fetches again)."""
        interval_ms = partition.log.config.flush_interval_ms
        if urgent or interval_ms <= 0:
            self._urgent.add(partition)
            if self._in_flight:
                self._collect()  # the running round may be done already: its producers need not wait for the loop
            self._schedule_round()
        elif partition not in self._lazy:
            deadline = time.monotonic() + interval_ms / 1000
            self._lazy[partition] = deadline
            self._arm_lazy_timer(deadline)

    def is_flushing(self, partition: Partition) -> bool:
        return partition in self._in_flight.values()

    async def forget(self, partitions: Iterable[Partition]) -> None:
        """Stop flushing partitions about to be deleted; returns once no fsync of theirs is running."""
        doomed = set(partitions)
        self._urgent -= doomed
        for partition in doomed:
            self._lazy.pop(partition, None)
        while doomed & set(self._in_flight.values()):
            await self._next_round_end()

    async def stop(self) -> None:
        """Finish the running round, then fsync everything still dirty (lazy topics too) and stop the thread."""
        self._stopping = True
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        while self._in_flight:
            await self._next_round_end()
        self._urgent |= set(self._lazy)
        self._lazy.clear()
        if self._begin_round():
            await self._next_round_end()
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    # -- rounds --------------------------------------------------------------------------------------------------

    def _schedule_round(self) -> None:
        if self._in_flight or self._round_scheduled or self._stopping or self._loop is None:
            return  # the running round starts the next one as it completes
        self._round_scheduled = True
        # call_soon: callbacks already queued in this loop iteration (other requests' appends) run first and join
        self._loop.call_soon(self._scheduled_round)

    def _scheduled_round(self) -> None:
        self._round_scheduled = False
        if not self._in_flight:
            self._begin_round()

    def _arm_lazy_timer(self, deadline: float) -> None:
        if self._loop is None or self._stopping or deadline >= self._lazy_timer_at:
            return
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
        self._lazy_timer_at = deadline
        self._lazy_timer = self._loop.call_at(self._loop.time() + max(0.0, deadline - time.monotonic()), self._lazy_due)

    def _lazy_due(self) -> None:
        self._lazy_timer = None
        self._lazy_timer_at = float("inf")
        now = time.monotonic()
        for partition, deadline in list(self._lazy.items()):
            if deadline <= now:
                del self._lazy[partition]
                self._urgent.add(partition)
        if self._lazy:
            self._arm_lazy_timer(min(self._lazy.values()))
        self._schedule_round()

    def _begin_round(self) -> bool:
        """Snapshot a flush ticket of every dirty partition and hand them to the fsync thread; False if none."""
        due, self._urgent = self._urgent, set()
        for partition in due:
            if partition.closed:
                continue
            try:
                self._in_flight[partition.log.flush_ticket()] = partition
            except PikafkaError as exc:
                log.error("cannot prepare a flush of %s: %s", partition.key, exc)
                partition.flush_failed(exc)
        if not self._in_flight or self._thread is None:
            for ticket in self._in_flight:
                ticket.release()
            self._in_flight = {}
            return False
        self._thread.submit(list(self._in_flight))
        return True

    def _collect(self) -> None:
        """Complete the round the fsync thread finished, if it did (any number of calls per round is fine)."""
        if self._thread is not None and self._thread.finished:
            self._round_done(*self._thread.finished.popleft())

    def _round_done(self, tickets: Sequence[FlushTicket], errors: list[Exception | None]) -> None:
        """On the loop, once the fsync thread finished a round: record what is durable, start the next round, then
        let the partitions answer the producers this round covered."""
        finished, self._in_flight = self._in_flight, {}
        self.rounds += 1
        synced: list[Partition] = []
        for ticket, error in zip(tickets, errors, strict=True):
            partition = finished[ticket]
            if partition.closed:
                continue
            if error is not None:
                log.error("fsync of %s failed: %s", partition.key, error)
                partition.flush_failed(
                    PikafkaError(ErrorCode.STORAGE_ERROR, f"fsync of partition {partition.key} failed: {error}")
                )
                continue
            partition.log.complete_flush(ticket)
            synced.append(partition)
        # The next round first, so the disk works while this round's producers are answered.
        if self._urgent and not self._stopping:
            self._begin_round()
        if self._round_over is not None:
            self._round_over.set_result(None)
            self._round_over = None
        for partition in synced:
            try:
                partition.flushed()
            except Exception:
                # One partition's trouble must not keep the others' producers waiting.
                log.exception("advancing %s after its fsync failed", partition.key)

    async def _next_round_end(self) -> None:
        if self._round_over is None:
            assert self._loop is not None
            self._round_over = self._loop.create_future()
        # shield: shared by every waiter; one caller's cancellation must not cancel it for the rest
        await asyncio.shield(self._round_over)
