"""The asyncio consumer: long-polls each leader for its assigned partitions and hands records out in offset order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from aiocoap.numbers.codes import Code

from clients.group_member import GroupMember, GroupSettings
from clients.metadata import STALE_METADATA_ERRORS, ClusterMetadata
from clients.records import ConsumerRecord, TopicPartition
from clients.start_stop import StartStopContext
from clients.transport import BrokerAddress, CoapTransport, parse_bootstrap
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import DEFAULT_FETCH_MAX_BYTES, DEFAULT_PORT, MAX_WAIT_MS
from pikafka.records import CorruptBatchError, decode_records, iter_batches

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = f"coap://127.0.0.1:{DEFAULT_PORT}"
OFFSET_RESET_POLICIES = ("earliest", "latest", "none")


class Consumer(StartStopContext):
    """Read records from pikafka topics.

    Without ``assign()`` the consumer reads every partition of the topics it was given. A partition without a
    position starts per ``auto_offset_reset``: "earliest" (the log start), "latest" (only records produced from now
    on) or "none" (raise OFFSET_OUT_OF_RANGE).

    With ``group_id`` the consumer joins that consumer group: the group's coordinator assigns it a share of the
    topics' partitions (``partition_assignment_strategy`` "range" or "roundrobin"), which changes whenever members
    come and go (``assignment()`` tells the current one). A partition starts at the group's committed offset, else
    per ``auto_offset_reset``. ``await commit()`` after processing what getmany() returned gives at-least-once
    delivery; ``enable_auto_commit`` commits the positions every ``auto_commit_interval_ms`` and before every
    rebalance and stop, as aiokafka does. See docs/groups.md.
    """

    def __init__(
        self,
        *topics: str,
        bootstrap: str | Sequence[str] = DEFAULT_BOOTSTRAP,
        auto_offset_reset: str = "earliest",
        fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
        fetch_max_wait_ms: int = 500,
        max_records: int | None = None,
        request_timeout_ms: int = 10_000,
        retry_backoff_ms: int = 100,
        group_id: str | None = None,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        session_timeout_ms: int = 3000,
        heartbeat_interval_ms: int = 500,
        rebalance_timeout_ms: int = 10_000,
        partition_assignment_strategy: str = "range",
        client_id: str = "",
    ) -> None:
        if group_id is not None and not group_id:
            raise ValueError("group_id must not be empty")
        if not 100 <= session_timeout_ms <= 300_000:
            raise ValueError("session_timeout_ms must be within 100..300000")
        if not 0 < heartbeat_interval_ms < session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be above 0 and below session_timeout_ms")
        if auto_commit_interval_ms < 1:
            raise ValueError("auto_commit_interval_ms must be at least 1")
        if auto_offset_reset not in OFFSET_RESET_POLICIES:
            raise ValueError(f"auto_offset_reset must be one of {', '.join(OFFSET_RESET_POLICIES)}")
        if not 0 <= fetch_max_wait_ms <= MAX_WAIT_MS:
            raise ValueError(f"fetch_max_wait_ms must be within 0..{MAX_WAIT_MS}")
        if max_records is not None and max_records < 1:
            raise ValueError("max_records must be at least 1")
        self._topics = list(dict.fromkeys(topics))
        self._bootstrap = parse_bootstrap(bootstrap if isinstance(bootstrap, str) else list(bootstrap))
        self._reset_policy = auto_offset_reset
        self._fetch_max_bytes = fetch_max_bytes
        self._wait_ms = fetch_max_wait_ms
        self._max_records = max_records
        self._timeout_s = request_timeout_ms / 1000
        self._backoff_s = retry_backoff_ms / 1000
        self._transport = CoapTransport()
        self._metadata = ClusterMetadata(self._transport, self._bootstrap, timeout_s=self._timeout_s)
        # position: the offset of the next record handed to the application; None until reset
        self._positions: dict[TopicPartition, int | None] = {}
        self._buffers: dict[TopicPartition, deque[ConsumerRecord]] = {}
        self._highwater: dict[TopicPartition, int] = {}
        self._explicit_assignment = False
        self._fetches: dict[BrokerAddress | None, asyncio.Task[None]] = {}
        self._data_ready = asyncio.Event()
        self._error: PikafkaError | None = None
        self._started = False
        self._closed = False
        self._rotation = 0
        self._group: GroupMember | None = None
        if group_id is not None:
            settings = GroupSettings(
                group_id,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                rebalance_timeout_ms=rebalance_timeout_ms,
                strategy=partition_assignment_strategy,
                client_id=client_id,
            )
            self._group = GroupMember(
                self._transport,
                self._bootstrap,
                self._topics,
                settings,
                timeout_s=self._timeout_s,
                backoff_s=self._backoff_s,
                on_rejoin_needed=self._data_ready.set,
            )
        self._auto_commit_s = auto_commit_interval_ms / 1000 if enable_auto_commit and group_id else None
        self._auto_commit_task: asyncio.Task[None] | None = None
        self._last_committed: dict[TopicPartition, int] = {}

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, learn the partitions of the topics (UNKNOWN_TOPIC_OR_PARTITION for a missing one)."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError("a stopped consumer cannot be started again")
        await self._transport.open()
        try:
            await self._metadata.refresh()
            if self._group is not None:
                for topic in self._topics:
                    self._partitions_of(topic)  # UNKNOWN_TOPIC_OR_PARTITION before joining
                self._set_group_assignment(await self._group.join())
                if self._auto_commit_s is not None:
                    self._auto_commit_task = asyncio.get_running_loop().create_task(self._auto_commit_loop())
            elif not self._explicit_assignment:
                tps = [tp for topic in self._topics for tp in self._partitions_of(topic)]
                self._set_assignment(tps)
        except BaseException:
            if self._group is not None:
                await self._group.leave()
            await self._transport.close()
            raise
        self._started = True

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_fetches()
        if self._auto_commit_task is not None:
            self._auto_commit_task.cancel()
            await asyncio.gather(self._auto_commit_task, return_exceptions=True)
        if self._group is not None and self._started:
            if self._auto_commit_s is not None:
                await self._commit_positions_quietly()
            await self._group.leave()
        if self._started:
            await self._transport.close()

    async def _stop_fetches(self) -> None:
        for task in self._fetches.values():
            task.cancel()
        if self._fetches:
            await asyncio.gather(*self._fetches.values(), return_exceptions=True)
        self._fetches.clear()

    # -- the group ----------------------------------------------------------------------------------------------

    def _set_group_assignment(self, tps: list[TopicPartition]) -> None:
        """A new generation's partitions: every position comes from the group's committed offsets again (another
        member may have moved it meanwhile)."""
        self._set_assignment(tps)
        for tp in tps:
            self._positions[tp] = None
            self._buffers[tp].clear()
        self._last_committed = {}

    async def _rebalance_if_needed(self) -> None:
        """Eager rebalancing: stop fetching, commit (with auto commit), give up every partition, rejoin."""
        group = self._group
        if group is None or not group.rejoin_needed.is_set():
            return
        await self._stop_fetches()
        if self._auto_commit_s is not None:
            await self._commit_positions_quietly()
        self._set_assignment([])
        self._set_group_assignment(await group.join())

    @property
    def generation(self) -> int | None:
        """The group generation of the current assignment (None without a group)."""
        return None if self._group is None else self._group.generation

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Commit the positions of every assigned partition (the offset of the next record to hand out), or the
        given offsets (the next record to read, i.e. last processed + 1). Raises CommitFailedError when the group
        rebalanced meanwhile (the partitions may be another member's now)."""
        self._check_running()
        if self._group is None:
            raise ValueError("commit() needs a group_id")
        if offsets is None:
            offsets = {tp: pos for tp, pos in self._positions.items() if pos is not None}
        for tp in offsets:
            self._check_assigned(tp)
        await self._group.commit(offsets)
        self._last_committed.update(offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset for tp (None when it has none)."""
        if self._group is None:
            raise ValueError("committed() needs a group_id")
        return (await self._group.committed([tp]))[tp]

    async def _commit_positions_quietly(self) -> None:
        changed = {
            tp: pos for tp, pos in self._positions.items() if pos is not None and self._last_committed.get(tp) != pos
        }
        if not changed or self._group is None:
            return
        try:
            await self._group.commit(changed)
            self._last_committed.update(changed)
        except PikafkaError as exc:
            log.info("auto commit failed: %s", exc)

    async def _auto_commit_loop(self) -> None:
        assert self._auto_commit_s is not None
        while True:
            await asyncio.sleep(self._auto_commit_s)
            group = self._group
            if group is not None and not group.rejoin_needed.is_set():
                await self._commit_positions_quietly()

    def _partitions_of(self, topic: str) -> list[TopicPartition]:
        self._metadata.require_topic(topic)
        return self._metadata.partitions(topic)

    # -- assignment and positions -----------------------------------------------------------------------------

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (replacing the topics' partitions given at construction)."""
        if self._group is not None:
            raise ValueError("a group member's partitions come from its group; assign() needs no group_id")
        tps = [TopicPartition(tp[0], tp[1]) for tp in partitions]
        self._explicit_assignment = True
        self._set_assignment(tps)

    def _set_assignment(self, tps: list[TopicPartition]) -> None:
        keep = set(tps)
        for tp in list(self._positions):
            if tp not in keep:
                del self._positions[tp]
                self._buffers.pop(tp, None)
        for tp in tps:
            self._positions.setdefault(tp, None)
            self._buffers.setdefault(tp, deque())

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def _check_assigned(self, tp: TopicPartition) -> None:
        if tp not in self._positions:
            raise ValueError(f"{tp} is not assigned to this consumer")

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """The next record handed out for tp will be the one at offset."""
        self._check_assigned(tp)
        if offset < 0:
            raise ValueError("offset must be >= 0")
        self._positions[tp] = offset
        self._buffers[tp].clear()

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        await self._reset(list(partitions) or list(self._positions), "earliest")

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        await self._reset(list(partitions) or list(self._positions), "latest")

    async def position(self, tp: TopicPartition) -> int:
        """Offset of the next record to be handed out for tp (resolving auto_offset_reset first if needed)."""
        self._check_assigned(tp)
        if self._positions[tp] is None:
            await self._reset([tp], self._reset_policy)
        position = self._positions[tp]
        assert position is not None
        return position

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's high watermark as of the last fetch answer (None before one)."""
        return self._highwater.get(tp)

    async def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: start for tp, (start, _) in (await self._log_bounds(partitions)).items()}

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: end for tp, (_, end) in (await self._log_bounds(partitions)).items()}

    async def _log_bounds(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """(log start, high watermark) per partition, as each partition's leader knows them.

        Asked of the leaders, not of the bootstrap: the bootstrap may be the zookeeper, which has no logs, or a
        follower, whose high watermark trails the leader's."""
        wanted = list(partitions)
        leaders: dict[BrokerAddress, set[str]] = {}
        for tp in wanted:
            leader = self._metadata.leader(tp)
            if leader is None:
                await self._metadata.refresh()
                leader = self._metadata.leader(tp)
            if leader is None:
                raise PikafkaError(ErrorCode.NOT_LEADER_OR_FOLLOWER, f"{tp} has no leader right now")
            leaders.setdefault(leader, set()).add(tp.topic)
        bounds: dict[TopicPartition, tuple[int, int]] = {}
        for leader, topics in leaders.items():
            for topic in sorted(topics):
                response = await self._transport.request(
                    leader, Code.GET, f"/topics/{topic}", timeout_s=self._timeout_s, accept_cbor=True
                )
                for p in response.cbor()["partitions"]:
                    tp = TopicPartition(topic, int(p["partition"]))
                    if self._metadata.leader(tp) == leader and "log_start_offset" in p:
                        end = p.get("high_watermark", p.get("log_end_offset"))
                        bounds[tp] = (int(p["log_start_offset"]), int(end))
        missing = [tp for tp in wanted if tp not in bounds]
        if missing:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no such partition: {missing[0]}")
        return {tp: bounds[tp] for tp in wanted}

    async def _reset(self, tps: list[TopicPartition], policy: str) -> None:
        for tp in tps:
            self._check_assigned(tp)
        if policy == "none":
            raise PikafkaError(
                ErrorCode.OFFSET_OUT_OF_RANGE, f"no valid position for {tps[0]} and auto_offset_reset is 'none'"
            )
        bounds = await self._log_bounds(tps)
        for tp, (start, end) in bounds.items():
            if tp in self._positions:
                self._positions[tp] = start if policy == "earliest" else end
                self._buffers[tp].clear()

    # -- reading ----------------------------------------------------------------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records that are ready, waiting up to timeout_ms for some to arrive; {} when none did."""
        self._check_running()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        limit = max_records if max_records is not None else self._max_records
        only = set(partitions) if partitions else None
        while True:
            await self._rebalance_if_needed()
            taken = self._take(limit, only)
            if taken:
                return taken
            remaining = deadline - loop.time()
            if not await self._wait_for_records(remaining):
                return {}

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> ConsumerRecord:
        """The next record of any assigned partition; waits as long as it takes."""
        self._check_running()
        while True:
            await self._rebalance_if_needed()
            taken = self._take(1, None)
            for records in taken.values():
                return records[0]
            await self._wait_for_records(None)

    def _check_running(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError("the consumer is not running (use `async with Consumer(...)` or await start())")

    def _take(self, limit: int | None, only: set[TopicPartition] | None) -> dict[TopicPartition, list[ConsumerRecord]]:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        tps = list(self._buffers)
        if not tps:
            return out
        # Start at a different partition each call so a busy one cannot starve the rest under a record limit.
        self._rotation = (self._rotation + 1) % len(tps)
        budget = limit
        for tp in tps[self._rotation :] + tps[: self._rotation]:
            if only is not None and tp not in only:
                continue
            buffer = self._buffers[tp]
            if not buffer:
                continue
            n = len(buffer) if budget is None else min(budget, len(buffer))
            records = [buffer.popleft() for _ in range(n)]
            out[tp] = records
            self._positions[tp] = records[-1].offset + 1
            if budget is not None:
                budget -= n
                if budget <= 0:
                    break
        return out

    async def _wait_for_records(self, timeout_s: float | None) -> bool:
        """Make sure every partition with an empty buffer is being fetched, then wait for any fetch to finish.
        False when timeout_s passed first."""
        if timeout_s is not None and timeout_s <= 0:
            self._launch_fetches()
            return False
        self._data_ready.clear()
        self._launch_fetches()
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races with completion.
        try:
            async with asyncio.timeout(timeout_s):
                await self._data_ready.wait()
        except TimeoutError:
            return False
        return True

    def _launch_fetches(self) -> None:
        wanted: dict[BrokerAddress | None, dict[TopicPartition, int | None]] = {}
        for tp, position in self._positions.items():
            if self._buffers[tp]:
                continue
            leader = self._metadata.leader(tp) if position is not None else None
            wanted.setdefault(leader, {})[tp] = position
        for leader, offsets in wanted.items():
            task = self._fetches.get(leader)
            if task is not None and not task.done():
                continue
            if leader is None:
                coro = self._prepare(list(offsets))
            else:
                # With records still waiting to be handed out, do not park this fetch in a long poll: partitions that
                # drain meanwhile could not be fetched from this leader until it returned.
                wait_ms = 0 if any(self._buffers.values()) else self._wait_ms
                coro = self._fetch(leader, {tp: off for tp, off in offsets.items() if off is not None}, wait_ms)
            self._fetches[leader] = asyncio.get_running_loop().create_task(coro)

    async def _prepare(self, tps: list[TopicPartition]) -> None:
        """Partitions that cannot be fetched yet: without a position (reset it) or without a known leader."""
        try:
            unpositioned = [tp for tp in tps if self._positions.get(tp, 0) is None]
            if unpositioned and self._group is not None:
                for tp, offset in (await self._group.committed(unpositioned)).items():
                    if offset is not None and tp in self._positions and self._positions[tp] is None:
                        self._positions[tp] = offset
                        self._last_committed[tp] = offset
                unpositioned = [tp for tp in unpositioned if self._positions.get(tp, 0) is None]
            if unpositioned:
                await self._reset(unpositioned, self._reset_policy)
            if any(self._metadata.leader(tp) is None for tp in tps if tp in self._positions):
                await self._metadata.refresh()
                if any(self._metadata.leader(tp) is None for tp in tps if tp in self._positions):
                    await asyncio.sleep(self._backoff_s)
        except PikafkaError as exc:
            self._record_error(exc)
            await asyncio.sleep(self._backoff_s)
        finally:
            self._data_ready.set()

    async def _fetch(self, leader: BrokerAddress, offsets: dict[TopicPartition, int], wait_ms: int) -> None:
        body: dict[str, Any] = {
            "partitions": [
                {"topic": tp.topic, "partition": tp.partition, "offset": off} for tp, off in offsets.items()
            ],
            "max_bytes": self._fetch_max_bytes,
            "wait_ms": wait_ms,
        }
        if self._max_records is not None:
            body["max_records"] = self._max_records
        try:
            response = await self._transport.request(
                leader, Code.FETCH, "/fetch", body=body, timeout_s=self._timeout_s + wait_ms / 1000
            )
            self._absorb(offsets, response.cbor())
        except PikafkaError as exc:
            if exc.code is ErrorCode.OFFSET_OUT_OF_RANGE:
                await self._recover_out_of_range(offsets)
            else:
                self._record_error(exc)
                if exc.code in STALE_METADATA_ERRORS:
                    with contextlib.suppress(PikafkaError):
                        await self._metadata.refresh()
                await asyncio.sleep(self._backoff_s)
        except (KeyError, TypeError, ValueError) as exc:
            self._record_error(PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, f"malformed fetch response: {exc}"))
            await asyncio.sleep(self._backoff_s)
        finally:
            self._data_ready.set()

    def _absorb(self, offsets: dict[TopicPartition, int], answer: Any) -> None:
        for p in answer["partitions"]:
            tp = TopicPartition(str(p["topic"]), int(p["partition"]))
            requested = offsets.get(tp)
            if "high_watermark" in p:
                self._highwater[tp] = int(p["high_watermark"])
            # A seek (or a re-assignment) while this fetch was out makes its records stale.
            if requested is None or self._positions.get(tp) != requested or self._buffers[tp]:
                continue
            buffer = self._buffers[tp]
            try:
                for header, batch in iter_batches(p["records"]):
                    if header.last_offset < requested:
                        continue
                    for r in decode_records(batch):
                        if r.offset >= requested:
                            buffer.append(
                                ConsumerRecord(
                                    tp.topic, tp.partition, r.offset, r.key, r.value, r.headers, r.timestamp_ms
                                )
                            )
            except CorruptBatchError as exc:
                buffer.clear()
                raise PikafkaError(ErrorCode.CORRUPT_MESSAGE, f"{tp.topic}/{tp.partition}: {exc}") from exc

    async def _recover_out_of_range(self, offsets: dict[TopicPartition, int]) -> None:
        """The fetch named a position outside some partition's log (it was truncated by retention, or the topic was
        re-created): move those partitions per auto_offset_reset."""
        try:
            bounds = await self._log_bounds([tp for tp in offsets if tp in self._positions])
            stale = [tp for tp, (start, end) in bounds.items() if not start <= offsets[tp] <= end]
            if stale:
                log.info("positions out of range, resetting (%s): %s", self._reset_policy, stale)
                await self._reset(stale, self._reset_policy)
            else:
                await asyncio.sleep(self._backoff_s)
        except PikafkaError as exc:
            self._record_error(exc)
            await asyncio.sleep(self._backoff_s)

    def _record_error(self, exc: PikafkaError) -> None:
        """Retriable trouble is logged and retried; anything else is raised from the next getmany / iteration."""
        if exc.retriable or exc.code is ErrorCode.NOT_LEADER_OR_FOLLOWER:
            log.debug("fetch will be retried: %s", exc)
        else:
            self._error = exc
