"""`pi-zookeeper`: the mini-zookeeper process.

    pi-zookeeper --config /etc/pikafka/zookeeper.toml [--bind ADDR] [--port 5680] [--data-dir DIR]
                 [--heartbeat-interval-ms 500] [--session-timeout-ms 2000] [--log-level INFO]

The TOML file takes the same names (bind, port, data_dir, heartbeat_interval_ms, session_timeout_ms, log_level,
push_timeout_ms). One aiocoap server context per process serves CoAP over UDP and TCP on the port and sends the
metadata pushes. A tick every 100 ms expires sessions (leader elections follow). SIGTERM or SIGINT: the state is
saved, the context closed, exit 0. Exit 2: bad configuration or an unusable state file (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import aiocoap

from pi_zookeeper.coordinator import Coordinator
from pi_zookeeper.metadata_push import MetadataPusher
from pi_zookeeper.resources import build_site
from pi_zookeeper.state import ClusterState
from pi_zookeeper.status_line import zookeeper_status
from pi_zookeeper.store import StateFileError, StateStore
from pikafka.background_task import cancel_and_wait
from pikafka.config_file import ConfigError, flag_overrides, read_toml
from pikafka.journal_logging import setup_logging
from pikafka.lifecycle import run_service
from pikafka.port_probe import ensure_port_free

log = logging.getLogger("pi_zookeeper")

# Not ZooKeeper's 2181 (nothing here speaks its protocol) and not the brokers' 5683, so a zookeeper and a broker can
# share a Raspberry Pi.
DEFAULT_PORT = 5680
TICK_S = 0.1
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class ZookeeperConfig:
    bind: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("/var/lib/pikafka-zookeeper")
    heartbeat_interval_ms: int = 500
    session_timeout_ms: int = 2000
    push_timeout_ms: int = 1000
    log_level: str = "INFO"

    def check(self) -> None:
        if not self.bind:
            raise ConfigError("bind must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be between 1 and 65535, got {self.port}")
        if not 50 <= self.heartbeat_interval_ms <= 60_000:
            raise ConfigError("heartbeat_interval_ms must be between 50 and 60000")
        if self.session_timeout_ms < 2 * self.heartbeat_interval_ms:
            # One lost heartbeat datagram must not be a death.
            raise ConfigError("session_timeout_ms must be at least twice heartbeat_interval_ms")
        if self.session_timeout_ms > 600_000:
            raise ConfigError("session_timeout_ms must be at most 600000")
        if not 50 <= self.push_timeout_ms <= 60_000:
            raise ConfigError("push_timeout_ms must be between 50 and 60000")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}")


def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pi-zookeeper", description="pikafka mini-zookeeper: membership and leaders")
    p.add_argument("--config", type=Path, help="TOML configuration file; flags below override it")
    p.add_argument("--bind", help="address to listen on (UDP and TCP)")
    p.add_argument("--port", type=int, help=f"CoAP port (default {DEFAULT_PORT})")
    p.add_argument("--data-dir", type=Path, help="directory holding cluster.json")
    p.add_argument("--heartbeat-interval-ms", type=int, help="how often brokers heartbeat (default 500)")
    p.add_argument("--session-timeout-ms", type=int, help="silence after which a broker is dead (default 2000)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return p


def load_config(argv: Sequence[str] | None = None) -> ZookeeperConfig:
    args = argument_parser().parse_args(argv)
    config = ZookeeperConfig()
    if args.config is not None:
        config = _from_mapping(read_toml(args.config), str(args.config))
    overrides = flag_overrides(args, ("bind", "port", "data_dir", "heartbeat_interval_ms", "session_timeout_ms"))
    if args.log_level is not None:
        overrides["log_level"] = args.log_level.upper()
    config = replace(config, **overrides)
    config.check()
    return config


def _from_mapping(raw: dict[str, Any], source: str) -> ZookeeperConfig:
    types = {f.name: f.type for f in fields(ZookeeperConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        expected = types.get(key)
        if expected is None:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        if expected == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{source}: {key} must be an integer")
        elif not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string")
        values[key] = Path(value) if key == "data_dir" else value
    if "log_level" in values:
        values["log_level"] = values["log_level"].upper()
    return ZookeeperConfig(**values)


class ZookeeperService:
    """What pikafka.lifecycle.run_service drives: start serving, stop cleanly."""

    def __init__(self, config: ZookeeperConfig) -> None:
        self.config = config
        self.store = StateStore(config.data_dir)
        self.context: aiocoap.Context | None = None
        self.pusher: MetadataPusher | None = None
        self.coordinator: Coordinator | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> str:
        cfg = self.config
        # Before anything else: aiocoap would share a taken port with its owner rather than fail (port_probe.py).
        ensure_port_free(cfg.bind, cfg.port)
        session_timeout = cfg.session_timeout_ms / 1000
        self.store.open()
        state = self.store.load(session_timeout, now=time.monotonic())
        fresh = state is None
        if state is None:
            state = ClusterState(session_timeout)
        self.coordinator = Coordinator(state, self.store, None, cfg.heartbeat_interval_ms, cfg.session_timeout_ms)
        if fresh:
            self.coordinator.save_now()  # the cluster id is decided once, durably, before any broker hears it
        self.context = await aiocoap.Context.create_server_context(
            build_site(self.coordinator), bind=(cfg.bind, cfg.port), transports=["udp6", "tcpserver", "tcpclient"]
        )
        self.pusher = MetadataPusher(self.context, cfg.push_timeout_ms / 1000)
        self.coordinator.pusher = self.pusher
        self._ticker = asyncio.create_task(self._tick_forever(), name="expiry")
        known = len(state.brokers)
        return (
            f"pi-zookeeper cluster {state.cluster_id} listening on {cfg.bind}:{cfg.port} (UDP+TCP), "
            f"{'new state' if fresh else f'{known} brokers and {len(state.topics)} topics restored'} "
            f"in {self.store.path}, session timeout {cfg.session_timeout_ms} ms"
        )

    async def _tick_forever(self) -> None:
        assert self.coordinator is not None
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.coordinator.tick()
            except Exception:
                # A failed save is retried next tick; nothing here may end the expiry loop.
                log.exception("expiry tick failed")

    def status_line(self) -> str:
        """STATUS= for `systemctl status`, refreshed by run_service (pi_zookeeper/status_line.py)."""
        return "starting" if self.coordinator is None else zookeeper_status(self.coordinator.state)

    async def stop(self) -> None:
        await cancel_and_wait(self._ticker)
        if self.coordinator is not None:
            try:
                self.coordinator.save_now()
            except OSError as exc:
                log.error("cannot save the state at shutdown: %s", exc)
        if self.pusher is not None:
            await self.pusher.close()
        if self.context is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.context.shutdown(), timeout=1.0)
        self.store.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"pi-zookeeper: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, "pi-zookeeper")  # stderr; the journal under systemd
    # aiocoap logs every unanswered push retransmission at INFO; ours are summarised by metadata_push.
    logging.getLogger("coap").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("coap-server").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return asyncio.run(run_service(ZookeeperService(config)))
    except StateFileError as exc:
        print(f"pi-zookeeper: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pi-zookeeper: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
