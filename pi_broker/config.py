"""The broker's settings: a TOML file, then command-line flags on top.

broker_id = 1
bind = "0.0.0.0"
port = 5683
data_dir = "/var/lib/pikafka"
advertised_host = "pi-3.local"
max_request_bytes = 4194304
retention_check_interval_ms = 300000
log_level = "INFO"

[topic_defaults]          # settings for topics created without them (pikafka.topic_config.TopicConfig)
retention_ms = 604800000
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pikafka.errors import PikafkaError
from pikafka.protocol import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_PORT
from pikafka.topic_config import TopicConfig

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


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
    zookeeper: str | None = None  # accepted for the cluster to come; a standalone broker ignores it

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
    parser.add_argument("--zookeeper", help="coordinator address (accepted; a standalone broker ignores it)")
    return parser


def load_config(argv: Sequence[str] | None = None) -> BrokerConfig:
    """Parse flags (argparse exits 2 on malformed ones), read the file they name, apply overrides, check."""
    args = argument_parser().parse_args(argv)
    config = BrokerConfig()
    if args.config is not None:
        try:
            with open(args.config, "rb") as f:
                document = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read {args.config}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{args.config}: {exc}") from None
        config = config_from_mapping(document, str(args.config))
    overrides: dict[str, Any] = {}
    for name in ("broker_id", "bind", "port", "data_dir", "advertised_host", "zookeeper"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.log_level is not None:
        overrides["log_level"] = args.log_level.upper()
    config = replace(config, **overrides)
    config.check()
    return config
