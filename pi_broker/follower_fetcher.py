"""Follower side of replication: one fetch loop per leader broker, batched over every partition it leads for us.

For each partition a FollowerFetcher first truncates (once per new leader or epoch): it asks the leader where this
replica's latest epoch ends in the leader's log (`POST /replica/epoch-end`) and cuts its own log there, so a tail a
deposed leader wrote and never had acknowledged by the ISR disappears before anything is fetched. Then it long-polls
`/fetch` with its replica id and, per partition, the epoch it follows and its log end as the offset; appends what comes
back unchanged; has it fsynced (group commit, urgent whatever the topic's flush interval) and only then fetches again,
so the offset it sends tells the leader what is durable here.

Every answer is checked against the current role before it touches the log: a response that arrives after the
partition moved to another leader (or after this broker became its leader) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiocoap.numbers.codes import Code

from pi_broker.group_commit import GroupCommit
from pi_broker.log.leader_epoch_cache import UNDEFINED_EPOCH
from pi_broker.partition import Partition, Role, TopicPartition
from pikafka.background_task import cancel_and_wait
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import CorruptBatchError, iter_batches

log = logging.getLogger(__name__)

_RETRY_S = 0.2  # after a partition-level refusal (the leader has not applied the metadata yet, say)
_BACKOFF_MAX_S = 1.0
_REQUEST_SLACK_S = 5.0  # beyond the long-poll wait, before an unanswered fetch counts as lost


class PeerRequester(Protocol):
    async def request(
        self, host: str, port: int, method: Any, path: str, body: Any | None, *, timeout_s: float
    ) -> Any: ...


@dataclass(frozen=True)
class FetchSettings:
    broker_id: int
    wait_ms: int
    max_bytes: int


@dataclass(eq=False)
class _Followed:
    partition: Partition
    epoch: int
    needs_truncation: bool = True
    stale: bool = False  # the leader is at a newer epoch: wait for the snapshot that says so
    retry_at: float = 0.0


class FollowerFetcher:
    def __init__(
        self,
        leader_id: int,
        host: str,
        port: int,
        peer: PeerRequester,
        group_commit: GroupCommit,
        settings: FetchSettings,
        on_stale_metadata: Any,
    ) -> None:
        self.leader_id = leader_id
        self.host = host
        self.port = port
        self.peer = peer
        self.group_commit = group_commit
        self.settings = settings
        self.on_stale_metadata = on_stale_metadata
        self._followed: dict[TopicPartition, _Followed] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._followed)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"follow-broker-{self.leader_id}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def add(self, partition: Partition, epoch: int) -> None:
        self._followed[partition.key] = _Followed(partition, epoch)
        self._changed.set()

    def remove(self, key: TopicPartition) -> None:
        if self._followed.pop(key, None) is not None:
            self._changed.set()

    def _current(self, followed: _Followed) -> bool:
        """Is this still what we should do? (checked after every await, before touching the log)"""
        p = followed.partition
        return (
            self._followed.get(p.key) is followed
            and not p.closed
            and p.role is Role.FOLLOWER
            and p.leader_id == self.leader_id
            and p.leader_epoch == followed.epoch
        )

    # ---- the loop ----

    async def _run(self) -> None:
        backoff = _RETRY_S
        while True:
            self._changed.clear()
            try:
                progressed = await self._round()
                backoff = _RETRY_S
            except PikafkaError as exc:
                log.warning("replicating from broker %d at %s:%d: %s", self.leader_id, self.host, self.port, exc)
                progressed = False
                await self._sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            except Exception:
                log.exception("replication from broker %d failed", self.leader_id)
                progressed = False
            if not progressed:
                await self._sleep(_RETRY_S)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early when the partitions to follow change."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that races with the event being set, and
        # remove() followed by stop() is exactly that race (the loop would then never end).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()

    async def _round(self) -> bool:
        """One truncation pass or one fetch; False when there was nothing to do."""
        now = time.monotonic()
        truncating = [f for f in self._followed.values() if f.needs_truncation and not f.stale and f.retry_at <= now]
        if truncating:
            await asyncio.gather(*(self._truncate(f) for f in truncating))
            return True
        ready = [
            f
            for f in self._followed.values()
            if not f.needs_truncation and not f.stale and f.retry_at <= now and self._current(f)
        ]
        if not ready:
            return False
        return await self._fetch(ready)

    # ---- truncation ----

    async def _truncate(self, followed: _Followed) -> None:
        p = followed.partition
        if not self._current(followed):
            return
        latest = p.log.epochs.latest_epoch
        if latest == UNDEFINED_EPOCH:
            followed.needs_truncation = False  # an empty log has nothing to disagree about
            return
        try:
            answer = await self.peer.request(
                self.host,
                self.port,
                Code.POST,
                "/replica/epoch-end",
                {
                    "topic": p.key.topic,
                    "partition": p.key.partition,
                    "epoch": latest,
                    "leader_epoch": followed.epoch,
                },
                timeout_s=_REQUEST_SLACK_S,
            )
        except PikafkaError as exc:
            self._refused(followed, exc)
            return
        if not self._current(followed):
            return
        leader_epoch, end = int(answer["epoch"]), int(answer["end_offset"])
        leo = p.log.log_end_offset
        if leader_epoch == UNDEFINED_EPOCH:
            target = leo  # the leader knows no epoch: let the fetch's range check settle it
        elif leader_epoch == latest:
            target = min(end, leo)
        else:
            # KIP-279: the leader ends at an older epoch than ours; our log may only be kept up to where BOTH logs
            # end that older epoch.
            own_end = p.log.epochs.end_offset_for(leader_epoch, leo).end_offset
            target = min(end, own_end if own_end >= 0 else leo, leo)
        if target < leo:
            log.info(
                "%s: truncating %d record(s) from %d: the leader (broker %d, epoch %d) ends epoch %d at %d",
                p.key,
                leo - target,
                target,
                self.leader_id,
                followed.epoch,
                leader_epoch,
                end,
            )
            if target < p.log.log_start_offset:
                p.truncate_fully_and_start_at(target)
            else:
                p.truncate_to(target)
        followed.needs_truncation = False

    # ---- fetching ----

    async def _fetch(self, ready: list[_Followed]) -> bool:
        body = {
            "replica_id": self.settings.broker_id,
            "max_bytes": self.settings.max_bytes,
            "wait_ms": self.settings.wait_ms,
            "partitions": [
                {
                    "topic": f.partition.key.topic,
                    "partition": f.partition.key.partition,
                    "offset": f.partition.log.log_end_offset,
                    "leader_epoch": f.epoch,
                }
                for f in ready
            ],
        }
        request = asyncio.ensure_future(
            self.peer.request(
                self.host,
                self.port,
                Code.FETCH,
                "/fetch",
                body,
                timeout_s=self.settings.wait_ms / 1000 + _REQUEST_SLACK_S,
            )
        )
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({request, changed}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            request.cancel()
            request.add_done_callback(_swallow)  # the loop is stopping: nobody reads that answer any more
            raise
        finally:
            changed.cancel()
        if not request.done():
            # A partition was added or moved: ask again with the new set rather than wait out the long poll. The
            # leader counted only the offsets we sent, which are still true.
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError, PikafkaError):
                await request
            return True
        answer = request.result()  # raises PikafkaError: the whole request failed
        by_key = {f.partition.key: f for f in ready}
        touched: list[tuple[Partition, int]] = []
        for entry in answer.get("partitions", []):
            key = TopicPartition(str(entry.get("topic")), int(entry.get("partition", -1)))
            followed = by_key.get(key)
            if followed is None or not self._current(followed):
                continue
            if entry.get("error"):
                self._refused(followed, PikafkaError.from_payload(0x80, str(entry["error"]).encode()), entry)
                continue
            if self._append(followed, entry.get("records") or b""):
                touched.append((followed.partition, followed.partition.log.log_end_offset))
            followed.partition.learn_leader_high_watermark(int(entry.get("high_watermark", 0)))
        for partition, _ in touched:
            self.group_commit.appended(partition, urgent=True)
        for partition, end in touched:
            with contextlib.suppress(PikafkaError):
                await partition.wait_flushed_to(end)
        return True

    def _append(self, followed: _Followed, records: bytes) -> bool:
        """Append the batches at our log end; False when nothing was appended."""
        p = followed.partition
        appended = False
        try:
            for header, view in iter_batches(records):
                leo = p.log.log_end_offset
                if header.next_offset <= leo:
                    continue  # the answer starts with the batch holding our offset
                if header.base_offset != leo:
                    log.warning("%s: leader sent a batch at %d, our log ends at %d", p.key, header.base_offset, leo)
                    followed.needs_truncation = True
                    break
                p.append_replica(bytes(view), header)
                appended = True
        except CorruptBatchError as exc:
            log.warning("%s: corrupt batch from broker %d (%s); fetching again", p.key, self.leader_id, exc)
        return appended

    def _refused(self, followed: _Followed, exc: PikafkaError, entry: dict[str, Any] | None = None) -> None:
        p = followed.partition
        code = exc.code
        if code is ErrorCode.FENCED_LEADER_EPOCH:
            # The leader is at a newer epoch than our metadata: nothing to do until the snapshot arrives.
            followed.stale = True
            self.on_stale_metadata()
        elif code is ErrorCode.OFFSET_OUT_OF_RANGE and entry is not None:
            leader_start = int(entry.get("log_start_offset", 0))
            leader_end = int(entry.get("log_end_offset", 0))
            leo = p.log.log_end_offset
            if leo < leader_start:
                log.info(
                    "%s: our log ends at %d, before the leader's log start %d: restarting there",
                    p.key,
                    leo,
                    leader_start,
                )
                p.truncate_fully_and_start_at(leader_start)
            elif leo > leader_end:
                p.truncate_to(leader_end)
        else:
            if code is ErrorCode.NOT_LEADER_OR_FOLLOWER:
                self.on_stale_metadata()
            log.debug("%s: broker %d refused: %s", p.key, self.leader_id, exc)
            followed.retry_at = time.monotonic() + _RETRY_S


def _swallow(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class FollowerFetchers:
    """The fetch loops of one broker, keyed by leader; moves partitions between them as leaders change."""

    def __init__(self, peer: PeerRequester, group_commit: GroupCommit, settings: FetchSettings, on_stale: Any) -> None:
        self.peer = peer
        self.group_commit = group_commit
        self.settings = settings
        self.on_stale = on_stale
        self._fetchers: dict[int, FollowerFetcher] = {}
        self._assigned: dict[TopicPartition, tuple[int, int, str, int]] = {}  # -> (leader, epoch, host, port)

    def follow(self, partition: Partition, leader_id: int, host: str, port: int, epoch: int) -> None:
        """Replicate `partition` from `leader_id` at `epoch` (a no-op when that is already being done)."""
        wanted = (leader_id, epoch, host, port)
        if self._assigned.get(partition.key) == wanted:
            return
        self.unfollow(partition.key)
        fetcher = self._fetchers.get(leader_id)
        if fetcher is not None and (fetcher.host, fetcher.port) != (host, port):
            # The leader came back on another address: the loop carries on with the new one.
            fetcher.host, fetcher.port = host, port
        if fetcher is None:
            fetcher = FollowerFetcher(leader_id, host, port, self.peer, self.group_commit, self.settings, self.on_stale)
            self._fetchers[leader_id] = fetcher
            fetcher.start()
        fetcher.add(partition, epoch)
        self._assigned[partition.key] = wanted

    def unfollow(self, key: TopicPartition) -> None:
        assigned = self._assigned.pop(key, None)
        if assigned is not None and assigned[0] in self._fetchers:
            self._fetchers[assigned[0]].remove(key)

    async def retire_idle(self) -> None:
        """Stop loops that follow nothing any more."""
        for leader, fetcher in list(self._fetchers.items()):
            if len(fetcher) == 0:
                del self._fetchers[leader]
                await fetcher.stop()

    async def stop(self) -> None:
        fetchers = list(self._fetchers.values())
        self._fetchers.clear()
        self._assigned.clear()
        for fetcher in fetchers:
            await fetcher.stop()
