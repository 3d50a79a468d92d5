"""The broker's settings: a TOML file, then command-line flags on top.

broker_id = 1
bind = "0.0.0.0"
port = 5683
data_dir = "/var/lib/pikafka"
advertised_host = "pi-3.local"
max_request_bytes = 4194304
retention_check_interval_ms = 300000
log_level = "INFO"
zookeeper = "coap://pi-1.local:5680"   # omit for a standalone broker
rack = "shelf-2"
replica_lag_time_max_ms = 3000         # an in-sync follower not caught up for this long leaves the ISR
replica_fetch_wait_ms = 500            # long-poll wait of a follower's fetch
replica_fetch_max_bytes = 1048576      # per follower fetch, across partitions
loop_fsync_max_ms = 2                  # the loop fsyncs itself while recent fsyncs average at most this; 0: never

[topic_defaults]          # settings for topics created without them (pikafka.topic_config.TopicConfig)
retention_ms = 604800000
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pikafka.config_file import ConfigError, flag_overrides, read_toml
from pikafka.errors import PikafkaError
from pikafka.protocol import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_PORT
from pikafka.topic_config import TopicConfig

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_coap_address(address: str) -> tuple[str, int]:
    """`coap://HOST:PORT` (scheme optional, coap+tcp accepted) -> (host, port)."""
    text = address if "://" in address else f"coap://{address}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{address!r} is not coap://HOST:PORT") from None
    if parts.scheme not in ("coap", "coap+tcp") or not parts.hostname:
        raise ValueError(f"{address!r} is not coap://HOST:PORT")
    return parts.hostname, port or DEFAULT_PORT


@dataclass(frozen=True)
class BrokerConfig:
    broker_id: int = 1
    bind: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("/var/lib/pikafka")
    advertised_host: str | None = None  # what clients are told to connect to; None: the bind address or hostname
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    retention_check_interval_ms: int = 300_000
    topic_defaults: TopicConfig = field(default_factory=TopicConfig)
    log_level: str = "INFO"
    zookeeper: str | None = None  # "coap://HOST:PORT" of the zookeeper; None: a standalone broker
    rack: str | None = None
    replica_lag_time_max_ms: int = 3000
    replica_fetch_wait_ms: int = 500
    replica_fetch_max_bytes: int = 1024 * 1024
    # The event loop fsyncs group-commit rounds itself, saving the hand-off to a thread, while recent fsyncs took at
    # most this long on average; 0: always on the fsync threads (pi_broker/fsync_placement.py).
    loop_fsync_max_ms: int = 2

    def check(self) -> None:
        if not 0 <= self.broker_id <= 2**31 - 1:
            raise ConfigError(f"broker_id must be between 0 and {2**31 - 1}, got {self.broker_id}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be between 1 and 65535, got {self.port}")
        if not 1024 <= self.max_request_bytes <= 64 * 1024 * 1024:
            raise ConfigError("max_request_bytes must be between 1 KiB and 64 MiB")
        if not 1000 <= self.retention_check_interval_ms <= 24 * 3600 * 1000:
            raise ConfigError("retention_check_interval_ms must be between 1000 and 86400000")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}")
        if not self.bind:
            raise ConfigError("bind must not be empty")
        if self.zookeeper is not None:
            try:
                parse_coap_address(self.zookeeper)
            except ValueError as exc:
                raise ConfigError(f"zookeeper: {exc}") from None
        if not 100 <= self.replica_lag_time_max_ms <= 600_000:
            raise ConfigError("replica_lag_time_max_ms must be between 100 and 600000")
        if not 0 <= self.replica_fetch_wait_ms <= 30_000:
            raise ConfigError("replica_fetch_wait_ms must be between 0 and 30000")
        if self.replica_fetch_wait_ms >= self.replica_lag_time_max_ms:
            # A caught-up follower waits that long in a long poll; it must not look lagging meanwhile.
            raise ConfigError("replica_fetch_wait_ms must be smaller than replica_lag_time_max_ms")
        if not 1024 <= self.replica_fetch_max_bytes <= 16 * 1024 * 1024:
            raise ConfigError("replica_fetch_max_bytes must be between 1 KiB and 16 MiB")
        if not 0 <= self.loop_fsync_max_ms <= 1000:
            raise ConfigError("loop_fsync_max_ms must be between 0 and 1000")


# TOML key -> the Python type it must have (bool is excluded from int on purpose).
_FILE_KEYS: dict[str, type] = {
    "broker_id": int,
    "bind": str,
    "port": int,
    "data_dir": str,
    "advertised_host": str,
    "max_request_bytes": int,
    "retention_check_interval_ms": int,
    "log_level": str,
    "zookeeper": str,
    "rack": str,
    "replica_lag_time_max_ms": int,
    "replica_fetch_wait_ms": int,
    "replica_fetch_max_bytes": int,
    "loop_fsync_max_ms": int,
}


def config_from_mapping(raw: dict[str, Any], source: str = "config") -> BrokerConfig:
    """Build a config from a parsed TOML document; unknown keys and wrong types are ConfigError."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "topic_defaults":
            try:
                values[key] = TopicConfig.from_dict(value)
            except PikafkaError as exc:
                raise ConfigError(f"{source}: [topic_defaults]: {exc.reason}") from None
            continue
        expected = _FILE_KEYS.get(key)
        if expected is None:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be {'an integer' if expected is int else 'a string'}")
        values[key] = Path(str(value)) if key == "data_dir" else value
    if "log_level" in values:
        values["log_level"] = values["log_level"].upper()
    known = {f.name for f in fields(BrokerConfig)}
    assert set(values) <= known
    return BrokerConfig(**values)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi-broker", description="pikafka broker: a durable log served over CoAP")
    parser.add_argument("--config", type=Path, help="TOML configuration file; flags below override it")
    parser.add_argument("--id", dest="broker_id", type=int, help="broker id")
    parser.add_argument("--bind", help="address to listen on (UDP and TCP)")
    parser.add_argument("--port", type=int, help=f"CoAP port (default {DEFAULT_PORT})")
    parser.add_argument("--data-dir", type=Path, help="directory holding topics.json and the partition logs")
    parser.add_argument("--advertised-host", help="host name clients are told to use")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--zookeeper", help="zookeeper address coap://HOST:PORT; without it the broker is standalone")
    parser.add_argument("--rack", help="rack (or shelf, or room) of this broker, told to the zookeeper")
    parser.add_argument("--replica-lag-time-max-ms", type=int, help="ISR lag limit (default 3000)")
    parser.add_argument("--replica-fetch-wait-ms", type=int, help="follower long-poll wait (default 500)")
    parser.add_argument("--replica-fetch-max-bytes", type=int, help="bytes per follower fetch (default 1 MiB)")
    parser.add_argument(
        "--loop-fsync-max-ms",
        type=int,
        help="fsync on the event loop while recent fsyncs average at most this (default 2; 0: always on a thread)",
    )
    return parser


def load_config(argv: Sequence[str] | None = None) -> BrokerConfig:
    """Parse flags (argparse exits 2 on malformed ones), read the file they name, apply overrides, check."""
    args = argument_parser().parse_args(argv)
    config = BrokerConfig()
    if args.config is not None:
        config = config_from_mapping(read_toml(args.config), str(args.config))
    overrides = flag_overrides(
        args,
        (
            "broker_id",
            "bind",
            "port",
            "data_dir",
            "advertised_host",
            "zookeeper",
            "rack",
            "replica_lag_time_max_ms",
            "replica_fetch_wait_ms",
            "replica_fetch_max_bytes",
            "loop_fsync_max_ms",
        ),
    )
    if args.log_level is not None:
        overrides["log_level"] = args.log_level.upper()
    config = replace(config, **overrides)
    config.check()
    return config
