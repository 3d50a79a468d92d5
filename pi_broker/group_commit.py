"""Group commit: many producers' batches share one fsync.

An SD card manages a few hundred fsyncs a second at best, so fsyncing each batch before its acknowledgement would
cap the broker at that many batches per second whatever their size. Instead a produce appends (a plain write), tells
the group commit its partition is dirty and queues its acknowledgement on the partition (pending_acks.py). A round
takes a flush ticket from every dirty partition and fsyncs them all in one go; while it runs, new appends pile up
for the next round. When a round completes, each partition's flushed offset and high watermark advance and the
acknowledgements they cover go out, straight from the completion callback.

When rounds start:
- once requests stop arriving: a round is scheduled (call_soon) by the first write, and when its turn comes and the
  loop iteration before it brought more writes, it lets one more iteration pass (another call_soon), so that the
  requests a client is still sending share the fsync. A lone request waits one empty loop iteration, a stream of
  them at most the linger: `max_linger_s` (2 ms) while the fsyncs run on the threads, `loop_linger_s` (0.5 ms)
  while the loop fsyncs itself. On the threads (a slow disk), measured on the 2-core bench machine with 16
  one-record produces in flight, rounds grew from 3.7 to 5.1 requests each at the same produce rate: a third fewer
  fsyncs, which an SD card's wear and IOPS both count. On the loop (a fast disk) the fsync blocks the loop, so the
  requests read meanwhile join the next round anyway; there the 2 ms linger left the producers idle, and 0.5 ms
  served 0.83 of the bare server's rate against 0.69 (12 paired rounds), with rounds of 5.9 requests against 7.9;
- during a long burst of requests parsed in one read, once the oldest waiting write is old enough, so that the first
  requests of the burst do not wait for the last. While the fsyncs run on the threads (an SD card, whose fsyncs are
  what the broker runs short of) that is `max_linger_s` (2 ms). While the loop fsyncs itself it is about six
  requests' worth of the broker's own pace, within 0.5-2 ms (burst_pace.py): 0.5 ms where a produce takes the broker
  0.1 ms, about 2 ms at a Pi's 0.3 ms, so rounds hold about as many requests on either CPU. Not the loop's shorter
  linger: that one only spares producers an idle loop, while a burst's requests are already read and, on the loop,
  would wait out a split-off round's fsync anyway;
- on the fsync threads, up to `concurrent_rounds` at once (two): the next round may begin while the previous one is
  still in the kernel, rather than only once the loop has heard back from it. Two in flight beat one by about 5 % in
  one-record produce rate, and three were no better than one.
A round on a thread completes as soon as the loop notices the thread finished it: in the callback the thread
schedules or, sooner on a busy broker, in the next produce's call to appended().

Where a round is fsynced: on a fast disk the loop does it itself, in place, and answers the round's producers at
once; on a slow one (an SD card) an fsync thread does, so the loop keeps serving meanwhile (fsync_placement.py decides
from the timings of recent rounds). A round on the loop is over before anything else runs, so at most one is ever in
flight; the next one is scheduled, not begun, so that the requests read meanwhile join it.

Topics with flush_interval_ms > 0 trade durability for fewer fsyncs: their producers are acknowledged after the
write, and they are fsynced once the oldest unflushed write is that many milliseconds old. Their high watermark still
only advances after the fsync, so consumers never see what a power cut could take back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

from pi_broker.burst_pace import BurstPace
from pi_broker.fsync_placement import FsyncPlacement
from pi_broker.fsync_thread import FsyncThreads
from pi_broker.log.flush_ticket import FlushTicket
from pi_broker.partition import Partition
from pikafka.errors import ErrorCode, PikafkaError

log = logging.getLogger(__name__)


class GroupCommit:
    def __init__(
        self,
        concurrent_rounds: int = 2,
        max_linger_s: float = 0.002,
        loop_linger_s: float = 0.0005,
        placement: FsyncPlacement | None = None,
        min_burst_s: float = 0.0005,
        burst_requests: int = 6,
    ) -> None:
        self.placement = placement if placement is not None else FsyncPlacement()
        self._max_rounds = concurrent_rounds
        self._max_linger_s = max_linger_s  # while fsyncs run on the threads (a slow disk), and the most a burst waits
        self._loop_linger_s = loop_linger_s  # while the loop fsyncs itself (a fast disk)
        self._burst_pace = BurstPace(min_burst_s, max_linger_s, burst_requests)  # a burst's bound on the loop
        self._wrote = False  # an urgent write since the scheduled round last looked: it waits while they come
        self._dirty_since = 0.0  # monotonic time of the oldest write no round has taken yet
        self._urgent: set[Partition] = set()
        self._lazy: dict[Partition, float] = {}  # partition -> monotonic deadline for its fsync
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._lazy_timer_at = float("inf")
        self._rounds: dict[int, dict[FlushTicket, Partition]] = {}  # running rounds by id
        self._next_round_id = 0
        self._round_scheduled = False
        self._round_over: asyncio.Future[None] | None = None  # made on demand by those who wait for a round's end
        self._fsync: FsyncThreads | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.rounds = 0  # fsync rounds run; tests and stats read it
        self.rounds_on_loop = 0  # of which the loop fsynced itself

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fsync = FsyncThreads(self._loop, self._collect, self._max_rounds)
        self._fsync.start()

    def appended(self, partition: Partition, *, urgent: bool = False) -> None:
        """Note a write to `partition`; its high watermark will advance once it is fsynced. `urgent`: fsync in the
        next round whatever the topic's flush_interval_ms (a follower must be durable before it fetches again)."""
        interval_ms = partition.log.config.flush_interval_ms
        if urgent or interval_ms <= 0:
            now = time.monotonic()
            if not self._urgent:
                self._dirty_since = now
            self._burst_pace.appended(now)
            self._urgent.add(partition)
            self._wrote = True
            if self._rounds:
                self._collect()  # a running round may be done already: its producers need not wait for the loop
            if (
                self._round_scheduled
                and len(self._rounds) < self._max_rounds
                and now - self._dirty_since > self._burst_bound_s()
            ):
                # A long burst of requests read at once: its first writes should not wait for the whole burst.
                self._begin_round()
            else:
                self._schedule_round()
        elif partition not in self._lazy:
            deadline = time.monotonic() + interval_ms / 1000
            self._lazy[partition] = deadline
            self._arm_lazy_timer(deadline)

    def is_flushing(self, partition: Partition) -> bool:
        return any(partition in flushing.values() for flushing in self._rounds.values())

    async def forget(self, partitions: Iterable[Partition]) -> None:
        """Stop flushing partitions about to be deleted; returns once no fsync of theirs is running."""
        doomed = set(partitions)
        self._urgent -= doomed
        for partition in doomed:
            self._lazy.pop(partition, None)
        while any(doomed & set(flushing.values()) for flushing in self._rounds.values()):
            await self._next_round_end()

    async def stop(self) -> None:
        """Finish the running round, then fsync everything still dirty (lazy topics too) and stop the thread."""
        self._stopping = True
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        while self._rounds:
            await self._next_round_end()
        self._urgent |= set(self._lazy)
        self._lazy.clear()
        self._begin_round()
        while self._rounds:  # a round the loop fsynced is already over
            await self._next_round_end()
        if self._fsync is not None:
            self._fsync.stop()
            self._fsync = None

    # -- rounds --------------------------------------------------------------------------------------------------

    def _schedule_round(self) -> None:
        if len(self._rounds) >= self._max_rounds or self._round_scheduled or self._stopping or self._loop is None:
            return  # a running round starts the next one as it completes
        self._round_scheduled = True
        # call_soon: callbacks already queued in this loop iteration (other requests' appends) run first and join
        self._loop.call_soon(self._scheduled_round)

    def _scheduled_round(self) -> None:
        if self._wrote and not self._stopping and time.monotonic() - self._dirty_since < self._linger_s():
            # Requests are still coming in: let the next iteration's join this round (up to the linger).
            self._wrote = False
            assert self._loop is not None
            self._loop.call_soon(self._scheduled_round)
            return
        self._round_scheduled = False
        if len(self._rounds) < self._max_rounds:
            self._begin_round()

    def _burst_bound_s(self) -> float:
        """How old a burst's oldest waiting write may grow before a round is split off it, where rounds now run."""
        return self._burst_pace.bound_s if self.placement.on_loop else self._max_linger_s

    def _linger_s(self) -> float:
        # On a fast disk the loop is blocked by its own fsync anyway, and requests read meanwhile form the next round;
        # lingering there only leaves the producers idle (0.83 against 0.69 in benchmark (b),
        # docs/benchmarks-history.md).
        # On a slow disk the fsync is what the broker runs short of, so rounds wait longer to share one.
        return self._loop_linger_s if self.placement.on_loop else self._max_linger_s

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
        """Snapshot a flush ticket of every dirty partition and fsync them, on the loop right here or on an fsync
        thread as the placement says; False if none was dirty."""
        due, self._urgent = self._urgent, set()
        self._wrote = False
        self._burst_pace.round_began()
        flushing: dict[FlushTicket, Partition] = {}
        for partition in due:
            if partition.closed:
                continue
            try:
                flushing[partition.log.flush_ticket()] = partition
            except PikafkaError as exc:
                log.error("cannot prepare a flush of %s: %s", partition.key, exc)
                partition.flush_failed(exc)
        if not flushing or self._fsync is None:
            for ticket in flushing:
                ticket.release()
            return False
        round_id = self._next_round_id
        self._next_round_id += 1
        self._rounds[round_id] = flushing
        if self.placement.on_loop:
            self.rounds_on_loop += 1
            self._fsync.sync_here(round_id, list(flushing))
            self._collect()
        else:
            self._fsync.submit(round_id, list(flushing))
        return True

    def _collect(self) -> None:
        """Complete every round the fsync threads finished (any number of calls per round is fine)."""
        while self._fsync is not None and self._fsync.finished:
            self._round_done(*self._fsync.finished.popleft())

    def _round_done(
        self, round_id: int, tickets: Sequence[FlushTicket], errors: list[Exception | None], seconds: float
    ) -> None:
        """On the loop, once an fsync thread finished a round: record what is durable, start the next round, then
        let the partitions answer the producers this round covered. Rounds may finish out of order: an fsync covers
        every write made before it began, and flushed offsets only ever grow."""
        finished = self._rounds.pop(round_id)
        self.rounds += 1
        self.placement.record(seconds, sum(ticket.written_bytes for ticket in tickets))
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
        # The next round first, so the disk works while this round's producers are answered; unless the loop is
        # to fsync it, which would hold those answers back: then after them, with the requests read meanwhile.
        if self._urgent and not self._stopping and len(self._rounds) < self._max_rounds:
            if self.placement.on_loop:
                self._schedule_round()
            else:
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
