"""Delivers the buffer to pikafka in order: reads from the cursor, sends through one idempotent Producer, moves the
cursor over the acknowledged prefix.

While no broker answers, the producer keeps retrying the same batches with the same producer id and sequence
numbers (up to delivery_timeout_ms), so a batch whose ack was lost is not written twice when it is sent again; at
most `window` readings are in memory, the rest wait on disk. When delivery gives up, or the producer cannot even
start, a new producer starts over from the cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from clients.producer import Producer
from clients.records import RecordMetadata
from clients.sensor.config import SensorConfig
from clients.sensor.disk_buffer import DiskBuffer
from pikafka.errors import PikafkaError

log = logging.getLogger(__name__)

_BACKOFF_S = (0.5, 5.0)
# A reading unacknowledged this long means the broker is away (for the status line and the log).
UNREACHABLE_AFTER_S = 3.0


class Forwarder:
    def __init__(self, config: SensorConfig, buffer: DiskBuffer, *, window: int = 500) -> None:
        self.config = config
        self.buffer = buffer
        self.window = window
        self.appended = asyncio.Event()
        self.delivered = 0
        self._oldest_sent_at: float | None = None  # when the oldest unacknowledged reading was sent
        self._producer_up = False
        self._said_unreachable = False

    @property
    def reachable(self) -> bool:
        if not self._producer_up:
            return False
        sent = self._oldest_sent_at
        return sent is None or asyncio.get_running_loop().time() - sent < UNREACHABLE_AFTER_S

    async def run(self) -> None:
        delay = _BACKOFF_S[0]
        while True:
            producer = Producer(
                self.config.bootstrap,
                acks=self.config.acks,
                linger_ms=self.config.linger_ms,
                delivery_timeout_ms=self.config.delivery_timeout_ms,
                retry_backoff_max_ms=2000,
            )
            try:
                await producer.start()
                self._producer_up = True
                delay = _BACKOFF_S[0]
                await self._deliver(producer)
            except (PikafkaError, OSError) as exc:
                self._unreachable(f"{exc}")
            finally:
                self._producer_up = False
                self._oldest_sent_at = None
                # Stopping flushes what is queued; bounded, because the broker may be the thing that is away.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 2.0)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_S[1])

    def _unreachable(self, why: str) -> None:
        if not self._said_unreachable:
            self._said_unreachable = True
            log.warning("no pikafka broker reachable (%s): buffering readings on disk", why)

    async def _deliver(self, producer: Producer) -> None:
        loop = asyncio.get_running_loop()
        in_flight: deque[tuple[int, asyncio.Future[RecordMetadata]]] = deque()
        next_seq = self.buffer.cursor
        while True:
            self.appended.clear()
            next_seq = max(next_seq, self.buffer.cursor)  # the bound may have dropped readings we had not sent
            room = self.window - len(in_flight)
            for seq, key, value in self.buffer.read(next_seq, room) if room > 0 else []:
                # The buffer's sequence number travels along: consumers can see gaps (dropped) or repeats (a resend
                # after a crash, which the idempotent producer cannot recognise across processes).
                future = await producer.send(self.config.topic, value, key=key, headers=[("seq", b"%d" % seq)])
                if not in_flight:
                    self._oldest_sent_at = loop.time()
                in_flight.append((seq, future))
                next_seq = seq + 1
            if not in_flight:
                await self.appended.wait()
                continue
            head = in_flight[0][1]
            waiter = asyncio.ensure_future(self.appended.wait())
            pending: set[asyncio.Future[Any]] = {head, waiter}
            try:
                await asyncio.wait(pending, timeout=UNREACHABLE_AFTER_S, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if not head.done():
                self._unreachable(f"no acknowledgement for {UNREACHABLE_AFTER_S:.0f} s")
            acked_upto = None
            while in_flight and in_flight[0][1].done():
                seq, future = in_flight.popleft()
                future.result()  # a reading the producer gave up on: start over from the cursor
                acked_upto = seq + 1
                self._oldest_sent_at = loop.time() if in_flight else None
            if acked_upto is not None:
                count = acked_upto - self.buffer.cursor
                self.buffer.acknowledge(acked_upto)
                self.delivered += max(0, count)
                if self._said_unreachable:
                    self._said_unreachable = False
                    log.info("pikafka reachable again: delivering %d buffered reading(s)", self.buffer.pending)
