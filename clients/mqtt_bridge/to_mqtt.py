"""pikafka -> MQTT: a consumer-group member that publishes every record with QoS 1 and commits an offset only once
the MQTT broker acknowledged (PUBACK) every record before it.

Per partition the records in flight form a queue in offset order; the committed offset is the end of its fully
acknowledged prefix, so a restart (of the bridge, the MQTT broker or a pikafka leader) resumes at a record that
may have been published already but never after one that was not: at least once, in order per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from dataclasses import dataclass

from clients.consumer import Consumer
from clients.group_member import CommitFailedError
from clients.mqtt_bridge.config import BridgeConfig
from clients.mqtt_bridge.mqtt_link import MqttLink
from clients.mqtt_bridge.routes import ToMqttRoute, envelope_json, render_topic
from clients.records import ConsumerRecord, TopicPartition
from pikafka.errors import PikafkaError

log = logging.getLogger(__name__)

_RESTART_BACKOFF_S = (0.5, 10.0)  # after a failure: first delay, cap (doubling)
_POLL_MS = 500
_STOP_DRAIN_S = 5.0  # at stop, how long to wait for outstanding PUBACKs so their offsets can be committed


@dataclass
class _InFlight:
    offset: int
    publishes: tuple[asyncio.Future[None], ...]


class RestartFromCommitted(Exception):
    """A publish was refused: start over from the committed offsets (at least once, never a silent skip)."""


class ToMqtt:
    def __init__(self, config: BridgeConfig, link: MqttLink) -> None:
        self.config = config
        self.link = link
        self.routes: dict[str, list[ToMqttRoute]] = defaultdict(list)
        for route in config.to_mqtt:
            self.routes[route.topic].append(route)
        self._in_flight: dict[TopicPartition, deque[_InFlight]] = defaultdict(deque)
        self._acked_upto: dict[TopicPartition, int] = {}  # end of the acknowledged prefix
        self._committed: dict[TopicPartition, int] = {}
        self._consumer: Consumer | None = None
        self._stopping = False
        self.published = 0
        self.restarts = 0

    # -- status -----------------------------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        """True while a consumer is in the group (False while pikafka is unreachable or the group is forming)."""
        return self._consumer is not None

    def lag(self) -> int:
        """Records in the assigned partitions not yet acknowledged by the MQTT broker (as of the last fetch)."""
        consumer = self._consumer
        if consumer is None:
            return 0
        total = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            done = self._acked_upto.get(tp, self._committed.get(tp))
            if high is not None and done is not None:
                total += max(0, high - done)
        return total

    # -- the loop ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume and publish until cancelled; any failure restarts the consumer from the committed offsets."""
        delay = _RESTART_BACKOFF_S[0]
        while True:
            consumer = Consumer(
                *self.routes,
                bootstrap=self.config.bootstrap,
                group_id=self.config.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                client_id=self.link.client_id,
            )
            try:
                await consumer.start()
                self._consumer = consumer
                log.info("pikafka -> MQTT: joined group %r, partitions %s", self.config.group_id, _tps(consumer))
                delay = _RESTART_BACKOFF_S[0]
                await self._pump(consumer)
            except asyncio.CancelledError:
                await self._final_commit(consumer)
                raise
            except (PikafkaError, OSError, RestartFromCommitted) as exc:
                self.restarts += 1
                log.warning("pikafka -> MQTT: %s; resuming from the committed offsets in %.1f s", exc, delay)
            finally:
                self._consumer = None
                self._in_flight.clear()
                self._acked_upto.clear()
                with contextlib.suppress(Exception):
                    await consumer.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_BACKOFF_S[1])

    async def _pump(self, consumer: Consumer) -> None:
        loop = asyncio.get_running_loop()
        next_commit = loop.time() + self.config.commit_interval_ms / 1000
        assigned = consumer.assignment()
        while True:
            room = self.config.max_pending - self.link.unacknowledged
            if room <= 0:
                # Backpressure: the MQTT broker is slow or away; wait for PUBACKs instead of queueing without bound.
                await asyncio.sleep(0.05)
                batches: dict[TopicPartition, list[ConsumerRecord]] = {}
            else:
                wait_ms = min(_POLL_MS, max(0, int((next_commit - loop.time()) * 1000)))
                batches = await consumer.getmany(timeout_ms=wait_ms, max_records=room)
            if consumer.assignment() != assigned:
                assigned = consumer.assignment()
                self._forget_revoked(assigned)
                log.info("pikafka -> MQTT: assignment now %s", _tps(consumer))
            for tp, records in batches.items():
                queue = self._in_flight[tp]
                for record in records:
                    queue.append(_InFlight(record.offset, self._publish(record)))
                self._acked_upto.setdefault(tp, records[0].offset)
            if loop.time() >= next_commit:
                await self._commit(consumer)
                next_commit = loop.time() + self.config.commit_interval_ms / 1000

    def _publish(self, record: ConsumerRecord) -> tuple[asyncio.Future[None], ...]:
        payload = envelope_json(record) if self.config.envelope == "json" else (record.value or b"")
        self.published += 1
        return tuple(self.link.publish(render_topic(r.template, record), payload) for r in self.routes[record.topic])

    def _forget_revoked(self, assigned: set[TopicPartition]) -> None:
        for tp in list(self._in_flight):
            if tp not in assigned:
                del self._in_flight[tp]
                self._acked_upto.pop(tp, None)

    def _acknowledged_offsets(self) -> dict[TopicPartition, int]:
        """Advance each partition over its acknowledged prefix; the offsets worth committing."""
        out: dict[TopicPartition, int] = {}
        for tp, queue in self._in_flight.items():
            while queue and all(f.done() for f in queue[0].publishes):
                entry = queue[0]
                for f in entry.publishes:
                    if f.exception() is not None:
                        raise RestartFromCommitted(f"{tp.topic}/{tp.partition} offset {entry.offset}: {f.exception()}")
                queue.popleft()
                self._acked_upto[tp] = entry.offset + 1
            done = self._acked_upto.get(tp)
            # Never move a commit backwards (a re-read after a rebalance revisits offsets already acknowledged).
            if done is not None and done > self._committed.get(tp, -1):
                out[tp] = done
        return out

    async def _commit(self, consumer: Consumer) -> None:
        offsets = self._acknowledged_offsets()
        assigned = consumer.assignment()
        offsets = {tp: off for tp, off in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
            self._committed.update(offsets)
        except CommitFailedError as exc:
            # The group rebalanced: the next getmany rejoins; whoever owns the partitions resumes at the last commit.
            log.info("pikafka -> MQTT: commit refused (%s); rejoining", exc)
        except PikafkaError as exc:
            log.info("pikafka -> MQTT: commit failed (%s); retrying", exc)

    async def _final_commit(self, consumer: Consumer) -> None:
        """At stop: give outstanding publishes a moment to be acknowledged, then commit what was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_DRAIN_S
        while self.link.unacknowledged and self.link.connected.is_set() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            await self._commit(consumer)


def _tps(consumer: Consumer) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(consumer.assignment())) or "none"
