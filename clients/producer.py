"""The asyncio producer: batches records per partition and delivers them idempotently to each partition's leader."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from aiocoap.numbers.codes import Code

from clients.accumulator import ProducerBatch, RecordAccumulator
from clients.metadata import STALE_METADATA_ERRORS, ClusterMetadata
from clients.partitioner import StickyPartitioner, cached_partition_for_key
from clients.records import RecordMetadata, TopicPartition
from clients.start_stop import StartStopContext
from clients.transport import MAX_REQUEST_BYTES, BrokerAddress, CoapTransport, parse_bootstrap
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import ACKS_ALL, ACKS_LEADER, ACKS_NONE, DEFAULT_PORT
from pikafka.records import Header

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = f"coap://127.0.0.1:{DEFAULT_PORT}"
# Per-batch and per-request framing in the CBOR produce body (map keys, topic name, integers).
_BATCH_ENTRY_OVERHEAD = 64
_REQUEST_OVERHEAD = 64


# Extra time the client gives the broker to deliver its own timeout answer.
_ANSWER_MARGIN_S = 2.0


class Producer(StartStopContext):
    """Send records to pikafka topics.

    ``acks``: 0 (fire and forget, futures resolve with offset -1), 1 (the leader wrote it durably) or -1 / "all"
    (every in-sync replica has it). Records wait up to ``linger_ms`` for company, a batch holds up to
    ``max_batch_bytes``. Failed batches are retried with backoff on retriable errors, timeouts and lost
    connections until ``delivery_timeout_ms`` after the record was sent (or ``retries`` attempts, when given).
    With ``enable_idempotence`` (ignored for acks=0, where nobody answers) each batch carries a random producer id
    and a per-partition sequence, so a re-sent batch the broker already wrote is not written twice.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str] = DEFAULT_BOOTSTRAP,
        *,
        acks: int | str = ACKS_LEADER,
        linger_ms: float = 5,
        max_batch_bytes: int = 256 * 1024,
        request_timeout_ms: int = 10_000,
        delivery_timeout_ms: int = 120_000,
        retries: int | None = None,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1000,
        enable_idempotence: bool = True,
        buffer_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.acks = _parse_acks(acks)
        if max_batch_bytes < 1024:
            raise ValueError("max_batch_bytes must be at least 1024")
        self._bootstrap = parse_bootstrap(bootstrap if isinstance(bootstrap, str) else list(bootstrap))
        self._request_timeout_s = request_timeout_ms / 1000
        self._retries = retries
        self._backoff_s = retry_backoff_ms / 1000
        self._backoff_max_s = retry_backoff_max_ms / 1000
        self._buffer_bytes = buffer_bytes
        self._transport = CoapTransport()
        self._metadata = ClusterMetadata(self._transport, self._bootstrap, timeout_s=self._request_timeout_s)
        self._sticky = StickyPartitioner()
        self._accumulator = RecordAccumulator(
            max_batch_bytes=min(max_batch_bytes, MAX_REQUEST_BYTES - _REQUEST_OVERHEAD - _BATCH_ENTRY_OVERHEAD),
            linger_s=linger_ms / 1000,
            delivery_timeout_s=delivery_timeout_ms / 1000,
            idempotent=enable_idempotence and self.acks != ACKS_NONE,
            on_seal=self._batch_sealed,
        )
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._flushing = 0
        self._sender: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._stopping = False  # no new records; what is queued is being delivered
        self._sender_failure: PikafkaError | None = None
        self._ackless_leaders: set[BrokerAddress] = set()  # sent acks=0 requests since the last flush
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and learn the cluster's layout; raises if no bootstrap broker answers."""
        if self._sender is not None:
            return
        if self._closed or self._stopping:
            raise RuntimeError("a stopped producer cannot be started again")
        await self._transport.open()
        try:
            await self._metadata.refresh()
        except BaseException:
            await self._transport.close()
            raise
        self._sender = asyncio.get_running_loop().create_task(self._run_sender(), name="pikafka producer sender")

    async def stop(self) -> None:
        """Deliver what is queued (bounded by delivery_timeout_ms), then release the connection."""
        if self._closed or self._stopping:
            return
        self._stopping = True
        if self._sender is None:
            self._closed = True
            return
        try:
            await self._flush()
        finally:
            # The sender loop ends on its own once closed is set and it wakes up.
            self._closed = True
            self._wakeup.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            for task in list(self._requests):
                task.cancel()
            if self._requests:
                await asyncio.gather(*self._requests, return_exceptions=True)
            self._accumulator.fail_all(PikafkaError(ErrorCode.BROKER_NOT_AVAILABLE, "producer stopped"))
            await self._transport.close()

    @property
    def producer_id(self) -> int:
        """The id idempotent batches carry (-1 without idempotence)."""
        return self._accumulator.producer_id

    # -- sending ----------------------------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: bytes | str | None,
        key: bytes | str | None = None,
        headers: Sequence[Header] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one record; returns a future that resolves to where it landed (or raises why it could not).

        Waits only when the producer's buffer is full, or to learn an unknown topic's partitions."""
        if self._sender_failure is not None:
            raise self._sender_failure
        if self._sender is None or self._closed or self._stopping:
            raise RuntimeError("the producer is not running (use `async with Producer(...)` or await start())")
        if isinstance(value, str):
            value = value.encode()
        if isinstance(key, str):
            key = key.encode()
        count = self._metadata.partition_count(topic)
        if count is None:
            await self._metadata.refresh()
            count = self._metadata.require_topic(topic)
        if partition is None:
            if key is not None:
                partition = cached_partition_for_key(key, count)
            else:
                partition = self._sticky.partition(topic, count)
        elif not 0 <= partition < count:
            raise PikafkaError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} has no partition {partition} (it has {count})"
            )
        while self._accumulator.buffered_bytes >= self._buffer_bytes:
            self._space.clear()
            await self._space.wait()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RecordMetadata] = loop.create_future()
        record = (value, key, tuple(headers) if headers else (), timestamp_ms)
        if self._accumulator.append(TopicPartition(topic, partition), record, future, loop.time()):
            self._wakeup.set()
            # A batch filled up or a linger timer must start: let the sender run now, so a caller sending in a tight
            # loop (never awaiting anything else) still overlaps its sending with the network.
            await asyncio.sleep(0)
        return future

    async def partitions_for(self, topic: str) -> list[int]:
        """The topic's partition numbers (UNKNOWN_TOPIC_OR_PARTITION when it does not exist)."""
        if self._metadata.partition_count(topic) is None:
            await self._metadata.refresh()
        return list(range(self._metadata.require_topic(topic)))

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | str | None,
        key: bytes | str | None = None,
        headers: Sequence[Header] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        future = await self.send(topic, value, key, headers, partition, timestamp_ms)
        return await future

    async def flush(self) -> None:
        """Send everything queued now (ignoring linger) and wait until each record is delivered or has failed."""
        if self._sender is None:
            return
        await self._flush()

    async def _flush(self) -> None:
        batches = self._accumulator.pending_batches()
        if batches:
            self._flushing += 1
            self._wakeup.set()
            try:
                await asyncio.gather(*(batch.wait_done() for batch in batches))
            finally:
                self._flushing -= 1
        if self._ackless_leaders:
            await self._confirm_ackless_requests_read()

    async def _confirm_ackless_requests_read(self) -> None:
        """acks=0 requests get no answer, so nothing tells us the leader has even read them off the connection;
        closing right away could reset the connection and lose them. One answered request per leader after them,
        on the same ordered TCP connection, proves the leader has read everything sent before it."""
        leaders, self._ackless_leaders = self._ackless_leaders, set()
        for leader in leaders:
            with contextlib.suppress(PikafkaError):
                await self._transport.request(leader, Code.GET, "/metadata", timeout_s=self._request_timeout_s)

    def _batch_sealed(self, tp: TopicPartition) -> None:
        count = self._metadata.partition_count(tp.topic)
        if count is not None:
            self._sticky.batch_sealed(tp.topic, tp.partition, count)

    # -- the sender -------------------------------------------------------------------------------------------

    async def _run_sender(self) -> None:
        try:
            await self._sender_loop()
        except Exception as exc:
            # A bug here must not leave every future pending forever: fail what is queued, refuse new records.
            log.exception("producer sender failed")
            self._sender_failure = PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, f"producer sender failed: {exc}")
            self._accumulator.fail_all(self._sender_failure)

    async def _sender_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._wakeup.clear()
            now = loop.time()
            batches = self._accumulator.take_ready(now, flushing=self._flushing > 0, now_ms=int(time.time() * 1000))
            if batches:
                self._dispatch(batches, now)
            wake_at = self._accumulator.next_wakeup(loop.time())
            if wake_at is None:
                await self._wakeup.wait()
            else:
                delay = wake_at - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wakeup.wait()

    def _dispatch(self, batches: list[ProducerBatch], now: float) -> None:
        """Group ready batches by leader into requests below the size limit and send each as its own task."""
        by_leader: dict[BrokerAddress, list[ProducerBatch]] = defaultdict(list)
        for batch in batches:
            leader = self._metadata.leader(batch.tp)
            if leader is None:
                # No known leader (election, or metadata not refreshed yet): look again and retry shortly.
                self._accumulator.retry_later(batch, now + self._backoff_s)
                self._spawn(self._refresh_metadata())
                continue
            by_leader[leader].append(batch)
        for leader, group in by_leader.items():
            request: list[ProducerBatch] = []
            size = _REQUEST_OVERHEAD
            for batch in group:
                assert batch.payload is not None
                entry = len(batch.payload) + _BATCH_ENTRY_OVERHEAD
                if request and (batch.send_alone or request[0].send_alone or size + entry > MAX_REQUEST_BYTES):
                    self._spawn(self._send_request(leader, request))
                    request, size = [], _REQUEST_OVERHEAD
                request.append(batch)
                size += entry
            if request:
                self._spawn(self._send_request(leader, request))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _refresh_metadata(self) -> None:
        try:
            await self._metadata.refresh()
        except PikafkaError as exc:
            log.debug("metadata refresh failed: %s", exc)

    async def _send_request(self, leader: BrokerAddress, batches: list[ProducerBatch]) -> None:
        body = {
            "acks": self.acks,
            "timeout_ms": int(self._request_timeout_s * 1000),
            "batches": [{"topic": b.tp.topic, "partition": b.tp.partition, "records": b.payload} for b in batches],
        }
        for batch in batches:
            batch.attempts += 1
        try:
            if self.acks == ACKS_NONE:
                await self._transport.send_without_response(leader, Code.POST, "/produce", body=body)
                self._ackless_leaders.add(leader)
                for batch in batches:
                    self._accumulator.succeeded(batch, -1)
                return
            # The broker answers REQUEST_TIMED_OUT after timeout_ms; wait a little longer than that so its answer
            # (which says "written, not replicated") arrives instead of our own timeout racing it.
            response = await self._transport.request(
                leader, Code.POST, "/produce", body=body, timeout_s=self._request_timeout_s + _ANSWER_MARGIN_S
            )
            results = response.cbor()["results"]
            if len(results) != len(batches):
                raise PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, "produce response does not match the request")
            for batch, result in zip(batches, results, strict=True):
                self._accumulator.succeeded(batch, int(result["base_offset"]))
        except PikafkaError as exc:
            await self._handle_failure(batches, exc)
        except (KeyError, TypeError, ValueError) as exc:
            await self._handle_failure(
                batches, PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, f"malformed produce response: {exc}")
            )
        finally:
            self._after_request()

    async def _handle_failure(self, batches: list[ProducerBatch], exc: PikafkaError) -> None:
        loop = asyncio.get_running_loop()
        if exc.code in STALE_METADATA_ERRORS:
            await self._refresh_metadata()
        for batch in batches:
            now = loop.time()
            if self._should_retry(batch, exc):
                delay = min(self._backoff_s * 2 ** (batch.attempts - 1), self._backoff_max_s)
                if batch.attempts > 1 or exc.code is not ErrorCode.NOT_LEADER_OR_FOLLOWER:
                    log.debug("retrying %s in %.2fs after %s", batch.tp, delay, exc)
                if now + delay < batch.deadline:
                    self._accumulator.retry_later(batch, now + delay)
                    continue
                gave_up = PikafkaError(exc.code, f"{exc.reason} (gave up after {batch.attempts} attempts)")
                self._accumulator.failed(batch, gave_up)
                continue
            if len(batches) > 1 and not exc.retriable:
                # The whole request was refused for one of its partitions; find out which by sending each alone.
                batch.send_alone = True
                batch.attempts -= 1
                self._accumulator.retry_later(batch, now)
                continue
            self._accumulator.failed(batch, exc)

    def _should_retry(self, batch: ProducerBatch, exc: PikafkaError) -> bool:
        if self._retries is not None and batch.attempts > self._retries:
            return False
        if exc.retriable:
            return True
        # Not retriable by the table, but after a refresh it may just mean a leader moved or a topic is being made.
        return exc.code is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION and self._metadata.leader(batch.tp) is not None

    def _after_request(self) -> None:
        if self._accumulator.buffered_bytes < self._buffer_bytes:
            self._space.set()
        self._wakeup.set()


def _parse_acks(acks: int | str) -> int:
    if acks in ("all", "-1", ACKS_ALL):
        return ACKS_ALL
    if acks in (ACKS_LEADER, "1"):
        return ACKS_LEADER
    if acks in (ACKS_NONE, "0"):
        return ACKS_NONE
    raise ValueError(f"acks must be 0, 1, -1 or 'all', not {acks!r}")
