"""`pi-mqtt-bridge`: one process, one MQTT connection (a persistent session under a fixed client id), both
directions. Serves until SIGTERM, then commits what the MQTT broker acknowledged, PUBACKs what pikafka
acknowledged, and exits 0.

Exit codes: 0 after a graceful stop, 1 when it cannot start, 2 for a bad configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from clients.mqtt_bridge.config import BridgeConfig, ConfigError, load_config
from clients.mqtt_bridge.from_mqtt import FromMqtt
from clients.mqtt_bridge.mqtt_link import MqttLink
from clients.mqtt_bridge.to_mqtt import ToMqtt
from pikafka.journal_logging import setup_logging
from pikafka.lifecycle import run_service

log = logging.getLogger("pi_mqtt_bridge")


class BridgeService:
    """Driven by pikafka.lifecycle.run_service (READY=1, STATUS=, WATCHDOG=1, STOPPING=1)."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.from_mqtt = FromMqtt(config, self._ack) if config.from_mqtt else None
        self.link = MqttLink(
            config.mqtt,
            config.client_id,
            subscriptions=self.from_mqtt.subscriptions if self.from_mqtt else (),
            on_message=self.from_mqtt.on_message if self.from_mqtt else None,
        )
        self.to_mqtt = ToMqtt(config, self.link) if config.to_mqtt else None
        self._tasks: list[asyncio.Task[None]] = []

    def _ack(self, mid: int, qos: int) -> None:
        self.link.ack(mid, qos)

    async def start(self) -> str:
        # Connecting (to either side) happens in the background with retries: an MQTT broker or a pikafka cluster
        # that is down at boot is waited for, and `systemctl status` says so.
        self.link.start()
        if self.from_mqtt is not None:
            self._tasks.append(asyncio.create_task(self.from_mqtt.run(), name="mqtt -> pikafka"))
        if self.to_mqtt is not None:
            self._tasks.append(asyncio.create_task(self.to_mqtt.run(), name="pikafka -> mqtt"))
        for task in self._tasks:
            task.add_done_callback(_report_crash)
        return (
            f"bridging {self.config.bootstrap} <-> {self.config.mqtt.url} as {self.config.client_id!r} "
            f"(MQTT {self.config.mqtt.protocol}): {self.routes_text()}"
        )

    def routes_text(self) -> str:
        parts = [f"{r.topic} -> {r.template}" for r in self.config.to_mqtt]
        parts += [f"{r.filter} -> {r.topic}" for r in self.config.from_mqtt]
        return "; ".join(parts)

    def status_line(self) -> str:
        """STATUS= for `systemctl status`: "mqtt connected, 3 routes, lag pikafka->mqtt 0"."""
        routes = len(self.config.to_mqtt) + len(self.config.from_mqtt)
        parts = [
            f"mqtt {'connected' if self.link.connected.is_set() else 'disconnected (reconnecting)'}",
            f"{routes} route{'s' if routes != 1 else ''}",
        ]
        if self.to_mqtt is not None:
            joined = "" if self.to_mqtt.joined else " (not in the group yet: pikafka unreachable?)"
            parts.append(f"lag pikafka->mqtt {self.to_mqtt.lag()}{joined}")
        if self.from_mqtt is not None:
            pikafka_up = "" if self.from_mqtt.producer is not None else " (pikafka unreachable)"
            parts.append(f"mqtt->pikafka awaiting {self.from_mqtt.awaiting}{pikafka_up}")
        if self.link.disconnects:
            parts.append(f"{self.link.disconnects} reconnect{'s' if self.link.disconnects != 1 else ''}")
        return ", ".join(parts)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.from_mqtt is not None:
            await self.from_mqtt.drain()
        await self.link.stop()
        log.info("bridge stopped")


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # A bug, not an outage (outages are retried inside): exit so systemd restarts us (Restart=on-failure).
        log.error("%s failed", task.get_name(), exc_info=task.exception())
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"pi-mqtt-bridge: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, "pi-mqtt-bridge")
    logging.getLogger("coap").setLevel(logging.WARNING)
    try:
        return asyncio.run(run_service(BridgeService(config)))
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
