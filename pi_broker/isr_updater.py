"""IsrUpdater: turns a leader's IsrTracker proposals into ISR changes the zookeeper has accepted.

- Shrink: a periodic check removes followers that have not caught up for replica_lag_time_max_ms.
- Expand: checked on every follower fetch; a follower holding everything below the high watermark (at this epoch)
  is added.
At most one change per partition is in flight. The new ISR is used only once the zookeeper accepted it (the tracker
counts a member being added for the high watermark meanwhile, see isr_tracker.py). A change refused with
FENCED_LEADER_EPOCH means another broker leads now: this one steps down at once and asks for fresh metadata. Any other
failure (the zookeeper is down, say) leaves the ISR as it was; the next check proposes the change again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from pi_broker.partition import Partition, Role, TopicPartition
from pikafka.errors import ErrorCode, PikafkaError

log = logging.getLogger(__name__)


class IsrChangeClient(Protocol):
    async def alter_isr(self, topic: str, partition: int, leader_epoch: int, isr: list[int]) -> dict[str, Any]: ...

    def refresh_metadata_soon(self) -> None: ...


class IsrUpdater:
    def __init__(self, client: IsrChangeClient, lag_time_max_ms: int) -> None:
        self.client = client
        self.lag_max_s = lag_time_max_ms / 1000
        self._tasks: set[asyncio.Task[None]] = set()
        self._checker: asyncio.Task[None] | None = None
        # The last failure logged per partition: while the zookeeper is down the same change fails at every check.
        self._last_failure: dict[TopicPartition, ErrorCode] = {}

    def start(self, partitions: Callable[[], Iterable[Partition]]) -> None:
        self._checker = asyncio.create_task(self._check_forever(partitions), name="isr-shrink-check")

    async def stop(self) -> None:
        tasks = [t for t in (self._checker, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._checker = None

    # ---- proposals ----

    def follower_fetched(self, partition: Partition, replica: int) -> None:
        tracker = partition.isr
        if tracker is None or partition.role is not Role.LEADER:
            return
        proposal = tracker.expand_proposal(replica, partition.high_watermark, partition.epoch_start_offset)
        if proposal is not None:
            self._send(partition, proposal, f"broker {replica} caught up")

    def check_lagging(self, partitions: Iterable[Partition], now: float) -> None:
        for partition in partitions:
            tracker = partition.isr
            if tracker is None or partition.role is not Role.LEADER or partition.closed:
                continue
            proposal = tracker.shrink_proposal(now, self.lag_max_s)
            if proposal is not None:
                dropped = [r for r in tracker.isr if r not in proposal]
                self._send(partition, proposal, f"broker(s) {dropped} lag more than {self.lag_max_s:g} s")

    async def _check_forever(self, partitions: Callable[[], Iterable[Partition]]) -> None:
        # Four checks per lag period: a lagging follower leaves the ISR at most a quarter period late.
        interval = max(0.05, self.lag_max_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                self.check_lagging(list(partitions()), time.monotonic())
            except Exception:
                log.exception("ISR check failed")

    # ---- sending ----

    def _send(self, partition: Partition, proposal: tuple[int, ...], why: str) -> None:
        tracker = partition.isr
        assert tracker is not None
        tracker.begin_change(proposal)
        task = asyncio.create_task(self._alter(partition, tracker.isr, proposal, why), name=f"isr-{partition.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _alter(self, partition: Partition, old: tuple[int, ...], proposal: tuple[int, ...], why: str) -> None:
        epoch = partition.leader_epoch
        tracker = partition.isr
        try:
            answer = await self.client.alter_isr(partition.key.topic, partition.key.partition, epoch, list(proposal))
        except PikafkaError as exc:
            if partition.isr is tracker and tracker is not None:
                tracker.change_failed()
            if exc.code is ErrorCode.FENCED_LEADER_EPOCH:
                if partition.leader_epoch == epoch:
                    partition.step_down(f"the zookeeper refused an ISR change: {exc.reason}")
                self.client.refresh_metadata_soon()
            elif self._last_failure.get(partition.key) is not exc.code:
                log.warning("%s: ISR change %s -> %s failed: %s", partition.key, list(old), list(proposal), exc)
            self._last_failure[partition.key] = exc.code
            return
        except Exception:
            if partition.isr is tracker and tracker is not None:
                tracker.change_failed()
            log.exception("%s: ISR change failed", partition.key)
            return
        if partition.isr is not tracker or partition.leader_epoch != epoch or tracker is None:
            return  # the role changed while the request was out; the snapshot that changed it rules
        self._last_failure.pop(partition.key, None)
        isr = tuple(int(r) for r in answer.get("isr", proposal))
        version = int(answer.get("metadata_version", partition.isr_version))
        tracker.pending = None
        # Through the partition, so a snapshot newer than this answer (already applied) is not overridden.
        partition.adopt_isr(isr, version, time.monotonic())
        log.info("%s: isr %s -> %s at epoch %d (%s)", partition.key, list(old), list(isr), epoch, why)
