"""Group commit: many producers' batches share one fsync.

An SD card manages a few hundred fsyncs a second at best, so fsyncing each batch before its acknowledgement would
cap the broker at that many batches per second whatever their size. Instead a produce appends (a plain write), tells
the group commit its partition is dirty and waits for the partition's high watermark to pass its last offset. One
flusher task takes a flush ticket from every dirty partition and fsyncs them all in ONE worker-thread call; while
that runs, new appends pile up for the next round. When the thread returns, each partition's flushed offset and high
watermark advance and their waiters wake.

Topics with flush_interval_ms > 0 trade durability for fewer fsyncs: their producers are acknowledged after the
write, and the flusher fsyncs them once the oldest unflushed write is that many milliseconds old. Their high
watermark still only advances after the fsync, so consumers never see what a power cut could take back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from pi_broker.log.flush_ticket import FlushTicket
from pi_broker.log.partition_log import PartitionLog
from pi_broker.partition import Partition
from pikafka.errors import ErrorCode, PikafkaError

log = logging.getLogger(__name__)


class GroupCommit:
    def __init__(self) -> None:
        self._urgent: set[Partition] = set()
        self._lazy: dict[Partition, float] = {}  # partition -> monotonic deadline for its fsync
        self._wake = asyncio.Event()
        self._in_flight: set[Partition] = set()
        self._round_done: asyncio.Future[None] | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # fsync rounds run; tests and stats read it

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    def appended(self, partition: Partition, *, urgent: bool = False) -> None:
        """Note a write to `partition`; its high watermark will advance once it is fsynced. `urgent`: fsync in the
        next round whatever the topic's flush_interval_ms (a follower must be durable before it fetches again)."""
        interval_ms = partition.log.config.flush_interval_ms
        if urgent or interval_ms <= 0:
            self._urgent.add(partition)
        elif partition not in self._lazy:
            self._lazy[partition] = time.monotonic() + interval_ms / 1000
        self._wake.set()

    def is_flushing(self, partition: Partition) -> bool:
        return partition in self._in_flight

    async def forget(self, partitions: Iterable[Partition]) -> None:
        """Stop flushing partitions about to be deleted; returns once no fsync of theirs is running."""
        doomed = set(partitions)
        self._urgent -= doomed
        for partition in doomed:
            self._lazy.pop(partition, None)
        while self._round_done is not None and self._in_flight & doomed:
            await asyncio.shield(self._round_done)

    async def stop(self) -> None:
        """Finish the running round, then fsync everything still dirty (lazy topics too) and stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        remaining = self._urgent | set(self._lazy)
        self._urgent.clear()
        self._lazy.clear()
        if remaining:
            await self._flush(remaining)

    async def _run(self) -> None:
        while not self._stopping:
            if not self._urgent:
                timeout = None
                if self._lazy:
                    timeout = max(0.0, min(self._lazy.values()) - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._stopping:
                break
            now = time.monotonic()
            due = set(self._urgent)
            self._urgent.clear()
            for partition, deadline in list(self._lazy.items()):
                if deadline <= now:
                    due.add(partition)
                    del self._lazy[partition]
            if due:
                try:
                    await self._flush(due)
                except Exception:
                    # The flusher must outlive any single bad round, or every later producer would hang.
                    log.exception("group commit round failed")

    async def _flush(self, partitions: set[Partition]) -> None:
        live = [p for p in partitions if not p.closed]
        if not live:
            return
        tickets: list[tuple[Partition, FlushTicket]] = []
        for partition in live:
            try:
                tickets.append((partition, partition.log.flush_ticket()))
            except PikafkaError as exc:
                log.error("cannot prepare a flush of %s: %s", partition.key, exc)
                partition.flush_failed(exc)
        if not tickets:
            return
        self._in_flight = {p for p, _ in tickets}
        self._round_done = asyncio.get_running_loop().create_future()
        try:
            errors = await asyncio.to_thread(_fsync_all, [(p.log, t) for p, t in tickets])
        finally:
            self._in_flight = set()
            self._round_done.set_result(None)
            self._round_done = None
        self.rounds += 1
        for (partition, ticket), error in zip(tickets, errors, strict=True):
            if partition.closed:
                continue
            if error is not None:
                log.error("fsync of %s failed: %s", partition.key, error)
                partition.flush_failed(
                    PikafkaError(ErrorCode.STORAGE_ERROR, f"fsync of partition {partition.key} failed: {error}")
                )
                continue
            partition.log.complete_flush(ticket)
            partition.flushed()


def _fsync_all(jobs: list[tuple[PartitionLog, FlushTicket]]) -> list[OSError | None]:
    """Runs in a worker thread: fsync every ticket, collecting failures rather than stopping at the first."""
    errors: list[OSError | None] = []
    for partition_log, ticket in jobs:
        try:
            partition_log.fsync(ticket)
            errors.append(None)
        except OSError as exc:
            errors.append(exc)
    return errors
