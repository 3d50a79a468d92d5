"""The MQTT side of the bridge: one paho client (its network loop in paho's own thread), driven from asyncio.

paho calls back from its thread; everything the bridge does with those callbacks happens on the event loop, handed
over in batches (one loop wake-up for however many PUBACKs or messages arrived meanwhile).

Reconnecting is paho's: its loop thread retries with a delay doubling from `reconnect_min_s` to `reconnect_max_s`.
Messages published and not yet acknowledged stay in paho's session state and are sent again (DUP) after a reconnect,
in their original order, so a publish future resolves only once the broker sent PUBACK for it, however many
connections that took. The session is persistent (fixed client id; clean_session=False for 3.1.1, clean_start=False
and a session expiry for 5), so subscriptions and the QoS 1 messages queued for the bridge survive its restarts.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from clients.mqtt_bridge.config import MqttSettings
from clients.mqtt_bridge.routes import LOOP_PROPERTY

log = logging.getLogger(__name__)

# How long the MQTT broker keeps the bridge's session (subscriptions, queued messages) while it is away: a week.
SESSION_EXPIRY_S = 7 * 24 * 3600

MessageHandler = Callable[[mqtt.MQTTMessage], None]


class PublishRefused(Exception):
    """The MQTT 5 broker answered a publish with a failure reason code (e.g. not authorized)."""


class MqttLink:
    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        subscriptions: tuple[str, ...] = (),
        on_message: MessageHandler | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.v5 = settings.protocol == "5"
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._early: dict[int, Exception | None] = {}  # PUBACKs that arrived before publish() returned
        self._done: deque[tuple[asyncio.Future[None], Exception | None]] = deque()
        self._messages: deque[mqtt.MQTTMessage] = deque()
        self._drain_scheduled = False
        self.connected = asyncio.Event()
        self.connects = 0
        self._stopping = False
        self.disconnects = 0
        self.client = self._make_client()

    # -- setup ------------------------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if self.v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=self._on_message is not None,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password())
        if s.tls:
            client.tls_set(
                ca_certs=str(s.cafile) if s.cafile else None,
                certfile=str(s.certfile) if s.certfile else None,
                keyfile=str(s.keyfile) if s.keyfile else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        client.max_inflight_messages_set(s.max_inflight)
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_publish = self._paho_publish
        client.on_message = self._paho_message
        client.on_subscribe = self._paho_subscribe
        return client

    def start(self) -> None:
        """Begin connecting in paho's thread; returns at once (an absent broker is retried, never fatal)."""
        self._loop = asyncio.get_running_loop()
        s = self.settings
        if self.v5:
            props = _properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            self.client.connect_async(s.host, s.port, keepalive=s.keepalive, clean_start=False, properties=props)
        else:
            self.client.connect_async(s.host, s.port, keepalive=s.keepalive)
        self.client.loop_start()

    async def stop(self) -> None:
        """Disconnect cleanly (the session stays on the broker) and stop paho's thread."""
        self._stopping = True
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    # -- publishing -------------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        """QoS 1 publish; the future resolves when the broker acknowledged it (PUBACK), across reconnects."""
        assert self._loop is not None
        props = None
        if self.v5:
            props = _properties(PacketTypes.PUBLISH)
            props.UserProperty = (LOOP_PROPERTY, self.client_id)
        future: asyncio.Future[None] = self._loop.create_future()
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN still queues the message in paho (it is sent after the reconnect); anything else did not.
            future.set_exception(PublishRefused(f"paho refused the publish: {mqtt.error_string(info.rc)}"))
            return future
        with self._lock:
            if info.mid in self._early:
                error = self._early.pop(info.mid)
                _settle(future, error)
            else:
                self._waiting[info.mid] = future
        return future

    @property
    def unacknowledged(self) -> int:
        return len(self._waiting)

    # -- receiving --------------------------------------------------------------------------------------------

    def ack(self, mid: int, qos: int) -> None:
        """PUBACK a received message (manual acks: sent only once pikafka has the record)."""
        if qos > 0:
            self.client.ack(mid, qos)

    # -- paho callbacks (paho's thread) -----------------------------------------------------------------------

    def _schedule_drain(self) -> None:
        # Called with self._lock held.
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    def _paho_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties | None
    ) -> None:
        error = PublishRefused(f"MQTT broker refused the publish: {reason}") if reason.is_failure else None
        with self._lock:
            future = self._waiting.pop(mid, None)
            if future is None:
                self._early[mid] = error
                return
            self._done.append((future, error))
            self._schedule_drain()

    def _paho_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(message)
            self._schedule_drain()

    def _drain(self) -> None:
        with self._lock:
            self._drain_scheduled = False
            done, self._done = self._done, deque()
            messages, self._messages = self._messages, deque()
        for future, error in done:
            _settle(future, error)
        if self._on_message is not None:
            for message in messages:
                self._on_message(message)

    def _paho_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s refused the connection: %s; retrying", self.settings.url, reason)
            return
        self.connects += 1
        log.info(
            "%s MQTT broker %s as %r (MQTT %s, session %s)",
            "connected to" if self.connects == 1 else "reconnected to",
            self.settings.url,
            self.client_id,
            self.settings.protocol,
            "resumed" if flags.session_present else "new",
        )
        if self._subscriptions:
            # Subscribing again is harmless with a resumed session and needed with a new one.
            if self.v5:
                # No Local: the broker never sends the bridge the messages it published itself (the loop guard).
                options = SubscribeOptions(qos=1, noLocal=True)
                client.subscribe([(f, options) for f in self._subscriptions])
            else:
                client.subscribe([(f, 1) for f in self._subscriptions])
        self._set_connected(True)

    def _paho_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        for mqtt_filter, reason in zip(self._subscriptions, reasons, strict=False):
            if reason.is_failure:
                log.error("MQTT broker refused the subscription %r: %s", mqtt_filter, reason)
            else:
                log.info("subscribed to %r (QoS %d)", mqtt_filter, reason.value)

    def _paho_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning("cannot reach MQTT broker %s; retrying with backoff", self.settings.url)

    def _paho_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        self._set_connected(False)
        if self._stopping:
            return
        self.disconnects += 1
        log.warning(
            "lost the MQTT broker %s (%s); reconnecting with backoff %d..%d s, %d message(s) awaiting PUBACK",
            self.settings.url,
            reason,
            self.settings.reconnect_min_s,
            self.settings.reconnect_max_s,
            self.unacknowledged,
        )

    def _set_connected(self, value: bool) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.connected.set if value else self.connected.clear)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves this constructor unannotated


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
