"""Push subscriptions: records arrive as CoAP Observe notifications instead of being polled for (docs/groups.md,
"Push subscriptions").

One observation per partition, of `/topics/{t}/{p}/records?offset=N` at the partition's leader. Each notification
says where it starts (`offset`) and where the next one will (`next_offset`). aiocoap hands a slow reader only the
newest unread notification, so notifications can be skipped: a notification starting beyond our position is a gap,
filled with ordinary fetches before its records are taken. An observation that ends (the leader stepped down,
the broker restarted, the connection broke) is re-established at the leader the metadata names now, from our
position. So records arrive in order, none missed, none twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aiocoap
import cbor2
from aiocoap.numbers.codes import Code

from clients.metadata import ClusterMetadata
from clients.records import ConsumerRecord, TopicPartition
from clients.start_stop import StartStopContext
from clients.transport import BrokerAddress, CoapTransport, parse_bootstrap
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import decode_records, iter_batches

log = logging.getLogger(__name__)

_FETCH_MAX_BYTES = 1024 * 1024


class PushSubscriber(StartStopContext):
    """`async with PushSubscriber("readings", bootstrap=url) as s: async for record in s: ...`

    `start`: "earliest" (the log start), "latest" (records committed from now on) or {partition: offset}."""

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str | Sequence[str],
        partitions: Sequence[int] | None = None,
        start: str | dict[int, int] = "latest",
        request_timeout_ms: int = 10_000,
        retry_backoff_ms: int = 200,
        max_buffered: int = 10_000,
    ) -> None:
        self.topic = topic
        self._bootstrap = parse_bootstrap(bootstrap if isinstance(bootstrap, str) else list(bootstrap))
        self._wanted = list(partitions) if partitions is not None else None
        self._start = start
        self._timeout_s = request_timeout_ms / 1000
        self._backoff_s = retry_backoff_ms / 1000
        self._transport = CoapTransport()
        self._metadata = ClusterMetadata(self._transport, self._bootstrap, timeout_s=self._timeout_s)
        # Bounded: a reader slower than the producers makes the followers wait here, and the server's later
        # notifications overwrite each other in aiocoap until the gap is fetched.
        self._records: asyncio.Queue[ConsumerRecord] = asyncio.Queue(max_buffered)
        self.positions: dict[int, int] = {}
        self.resubscriptions = 0  # observations re-established (leader change, restart); for tests and the CLI
        self.gap_fetches = 0  # fetches made to fill skipped notifications
        self._tasks: list[asyncio.Task[None]] = []
        self._error: BaseException | None = None

    async def start(self) -> None:
        await self._transport.open()
        try:
            await self._metadata.refresh()
            count = self._metadata.require_topic(self.topic)
            partitions = self._wanted if self._wanted is not None else list(range(count))
            for p in partitions:
                if not 0 <= p < count:
                    raise PikafkaError(
                        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {self.topic!r} has no partition {p}"
                    )
                self.positions[p] = await self._initial_position(p)
        except BaseException:
            await self._transport.close()
            raise
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(p)) for p in self.positions]

    async def _initial_position(self, partition: int) -> int:
        if isinstance(self._start, dict):
            return int(self._start.get(partition, 0))
        answer = await self._subscribe_once(partition, None)
        return int(answer["log_start_offset"] if self._start == "earliest" else answer["high_watermark"])

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._transport.close()

    def __aiter__(self) -> PushSubscriber:
        return self

    async def __anext__(self) -> ConsumerRecord:
        return await self._records.get()

    async def get(self, timeout_s: float) -> ConsumerRecord | None:
        """The next record, or None after timeout_s without one."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._records.get()
        except TimeoutError:
            return None

    # -- following one partition -------------------------------------------------------------------------------

    async def _leader(self, partition: int) -> BrokerAddress:
        while True:
            leader = self._metadata.leader(TopicPartition(self.topic, partition))
            if leader is not None:
                return leader
            await asyncio.sleep(self._backoff_s)
            with contextlib.suppress(PikafkaError):
                await self._metadata.refresh()

    def _path(self, partition: int, offset: int | None) -> str:
        query = "" if offset is None else f"?offset={offset}"
        return f"/topics/{self.topic}/{partition}/records{query}"

    async def _subscribe_once(self, partition: int, offset: int | None) -> Any:
        leader = await self._leader(partition)
        response = await self._transport.request(
            leader, Code.GET, self._path(partition, offset), timeout_s=self._timeout_s
        )
        return response.cbor()

    async def _follow(self, partition: int) -> None:
        first = True
        while True:
            try:
                await self._observe(partition, resubscribing=not first)
            except asyncio.CancelledError:
                raise
            except (PikafkaError, aiocoap.error.Error, OSError, ValueError, KeyError) as exc:
                log.info("subscription to %s-%d ended (%s); subscribing again", self.topic, partition, exc)
            first = False
            self.resubscriptions += 1
            await asyncio.sleep(self._backoff_s)
            with contextlib.suppress(PikafkaError):
                await self._metadata.refresh()

    async def _observe(self, partition: int, *, resubscribing: bool) -> None:
        leader = await self._leader(partition)
        message = aiocoap.Message(code=Code.GET, uri=leader.tcp_base + self._path(partition, self.positions[partition]))
        message.opt.observe = 0
        # The transport's shared context: the subscription lives as long as the subscriber.
        request = self._transport._context().request(message)
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await request.response
            await self._take(partition, leader, response)
            async for notification in request.observation:
                await self._take(partition, leader, notification)
        finally:
            if not request.response.done():
                request.response.cancel()
            with contextlib.suppress(Exception):
                request.observation.cancel()

    async def _take(self, partition: int, leader: BrokerAddress, message: Any) -> None:
        if not message.code.is_successful():
            raise PikafkaError.from_payload(int(message.code), message.payload)
        document = cbor2.loads(message.payload)
        start = int(document["offset"])
        if start > self.positions[partition]:
            # Notifications were skipped (or retention moved the log start): fetch what lies between.
            await self._fill_gap(partition, leader, start)
        await self._deliver(partition, document["records"])
        self.positions[partition] = max(self.positions[partition], int(document["next_offset"]))

    async def _fill_gap(self, partition: int, leader: BrokerAddress, until: int) -> None:
        while self.positions[partition] < until:
            self.gap_fetches += 1
            body = {
                "partitions": [{"topic": self.topic, "partition": partition, "offset": self.positions[partition]}],
                "max_bytes": _FETCH_MAX_BYTES,
            }
            try:
                response = await self._transport.request(
                    leader, Code.FETCH, "/fetch", body=body, timeout_s=self._timeout_s
                )
            except PikafkaError as exc:
                if exc.code is ErrorCode.OFFSET_OUT_OF_RANGE:
                    log.warning(
                        "%s-%d: records %d..%d are gone (retention)",
                        self.topic,
                        partition,
                        self.positions[partition],
                        until,
                    )
                    self.positions[partition] = until
                    return
                raise
            entry = response.cbor()["partitions"][0]
            before = self.positions[partition]
            await self._deliver(partition, entry["records"], below=until)
            if self.positions[partition] == before:
                return  # nothing more below the high watermark yet; the notification's records follow

    async def _deliver(self, partition: int, records: bytes, below: int | None = None) -> None:
        for _, batch in iter_batches(records):
            for r in decode_records(batch):
                if r.offset < self.positions[partition] or (below is not None and r.offset >= below):
                    continue
                await self._records.put(
                    ConsumerRecord(self.topic, partition, r.offset, r.key, r.value, r.headers, r.timestamp_ms)
                )
                self.positions[partition] = r.offset + 1
