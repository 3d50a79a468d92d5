"""MQTT -> pikafka: every message of the bridge's subscriptions is produced with acks=all, and PUBACKed to the MQTT
broker only once pikafka acknowledged it.

Until that PUBACK the MQTT broker keeps the message in the bridge's persistent session and sends it again after a
reconnect, so a bridge killed at any point loses nothing (a message produced but not yet PUBACKed is produced
again: at least once). PUBACKs go out in the order the messages arrived, as MQTT requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from paho.mqtt.client import MQTTMessage

from clients.mqtt_bridge.config import BridgeConfig
from clients.mqtt_bridge.routes import LOOP_PROPERTY, FromMqttRoute, topic_matches
from clients.producer import Producer
from clients.records import RecordMetadata
from pikafka.background_task import cancel_and_wait
from pikafka.errors import PikafkaError
from pikafka.records import Header

log = logging.getLogger(__name__)

_RETRY_BACKOFF_S = (0.5, 10.0)


@dataclass
class _Received:
    message: MQTTMessage
    routes: list[FromMqttRoute]
    produced: list[asyncio.Future[RecordMetadata]] = field(default_factory=list)


class FromMqtt:
    def __init__(self, config: BridgeConfig, ack: Callable[[int, int], None]) -> None:
        self.config = config
        self._ack = ack
        self._incoming: asyncio.Queue[_Received] = asyncio.Queue()
        self._awaiting: deque[_Received] = deque()  # produced (or being produced), not yet PUBACKed, arrival order
        self._progress = asyncio.Event()
        self.producer: Producer | None = None
        self.bridged = 0
        self.dropped_loops = 0

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.filter for r in self.config.from_mqtt))

    @property
    def awaiting(self) -> int:
        return self._incoming.qsize() + len(self._awaiting)

    def on_message(self, message: MQTTMessage) -> None:
        """Called on the event loop for every message received (paho's thread hands them over)."""
        if _from_a_bridge(message):
            # The loop guard (MQTT 5): a bridge published this; acknowledge and drop it.
            self.dropped_loops += 1
            self._ack(message.mid, message.qos)
            return
        routes = [r for r in self.config.from_mqtt if topic_matches(r.filter, message.topic)]
        self._incoming.put_nowait(_Received(message, routes))

    async def run(self) -> None:
        producer = await self._start_producer()
        self.producer = producer
        acker = asyncio.create_task(self._ack_in_order(), name="mqtt acks")
        try:
            while True:
                received = await self._incoming.get()
                received.produced = [await self._send(producer, r, received.message) for r in received.routes]
                self._awaiting.append(received)
                self._progress.set()
        finally:
            await cancel_and_wait(acker)

    async def drain(self) -> None:
        """At stop: deliver what was produced and PUBACK it (what never reached pikafka is redelivered by MQTT)."""
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.flush(), 5.0)
            while self._awaiting and all(f.done() for f in self._awaiting[0].produced):
                received = self._awaiting.popleft()
                if all(f.exception() is None for f in received.produced):
                    self._ack(received.message.mid, received.message.qos)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), 5.0)

    async def _start_producer(self) -> Producer:
        delay = _RETRY_BACKOFF_S[0]
        while True:
            producer = Producer(self.config.bootstrap, acks="all", linger_ms=2)
            try:
                await producer.start()
                log.info(
                    "MQTT -> pikafka: producing to %s", ", ".join(sorted({r.topic for r in self.config.from_mqtt}))
                )
                return producer
            except (PikafkaError, OSError) as exc:
                log.warning("MQTT -> pikafka: no pikafka broker reachable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_BACKOFF_S[1])

    async def _send(
        self, producer: Producer, route: FromMqttRoute, message: MQTTMessage
    ) -> asyncio.Future[RecordMetadata]:
        # Keyed by the MQTT topic: one MQTT topic stays in one partition, in order.
        headers: list[Header] = [("mqtt_topic", message.topic.encode())]
        props = getattr(message, "properties", None)
        for name, value in getattr(props, "UserProperty", None) or []:
            headers.append((f"mqtt.{name}", str(value).encode()))
        delay = _RETRY_BACKOFF_S[0]
        while True:
            try:
                return await producer.send(route.topic, bytes(message.payload), key=message.topic, headers=headers)
            except PikafkaError as exc:
                log.warning("MQTT -> pikafka: cannot queue for %s (%s); retrying in %.1f s", route.topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_BACKOFF_S[1])

    async def _ack_in_order(self) -> None:
        assert self.producer is not None
        while True:
            if not self._awaiting:
                self._progress.clear()
                await self._progress.wait()
                continue
            head = self._awaiting[0]
            await asyncio.wait(head.produced)
            failed = [(r, f) for r, f in zip(head.routes, head.produced, strict=True) if f.exception() is not None]
            if failed:
                # Delivery gave up (pikafka away longer than the producer's delivery timeout): produce it again
                # rather than PUBACK something pikafka does not have.
                log.warning(
                    "MQTT -> pikafka: %s not delivered (%s); producing it again",
                    head.message.topic,
                    failed[0][1].exception(),
                )
                head.produced = [
                    f if f.exception() is None else await self._send(self.producer, r, head.message)
                    for r, f in zip(head.routes, head.produced, strict=True)
                ]
                continue
            self._awaiting.popleft()
            self._ack(head.message.mid, head.message.qos)
            self.bridged += 1


def _from_a_bridge(message: MQTTMessage) -> bool:
    props = getattr(message, "properties", None)
    return any(name == LOOP_PROPERTY for name, _ in (getattr(props, "UserProperty", None) or []))
