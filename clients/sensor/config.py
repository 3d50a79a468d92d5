"""pi-sensor's settings: a TOML file, then flags on top.

```toml
bootstrap = "coap://pi-1.local:5683"
topic = "readings"
device = "shed-pi"                  # default: the host name
acks = "all"                        # 0, 1 or all
state_dir = "/var/lib/pikafka/sensor"
buffer_max_bytes = 8388608          # bound of the store-and-forward buffer; the oldest readings go first
buffer_flush_interval_ms = 1000     # fsync period: a power cut loses at most this much of the readings
log_level = "INFO"

[[source]]
type = "cpu_temp"                   # cpu_temp, load, memory, disk, network, command, python
interval_s = 10

[[source]]
type = "disk"
path = "/"
interval_s = 60

[[source]]
type = "command"
name = "soil"
command = "/usr/local/bin/read-soil"   # prints a number or a SenML JSON array
unit = "%RH"
interval_s = 30

[[source]]
type = "python"
name = "bme280"
entry_point = "my_sensors:read_bme280"  # returns a number or SenML records
interval_s = 5
```

Without any [[source]] the built-in five are read: cpu_temp and load every 10 s, network every 10 s, memory every
30 s, disk (/) every 60 s.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pikafka.config_file import ConfigError as ConfigError  # re-exported: the service catches it
from pikafka.config_file import read_toml

SOURCE_TYPES = ("cpu_temp", "load", "memory", "disk", "network", "command", "python")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class SourceSpec:
    type: str
    interval_s: float
    name: str = ""
    path: str | None = None  # disk: mount point; cpu_temp: thermal class directory
    command: str | None = None
    entry_point: str | None = None
    unit: str | None = None
    timeout_s: float = 10.0

    @property
    def measurement(self) -> str:
        """The name in the record key (device/measurement)."""
        return self.name or self.type

    def check(self) -> None:
        if self.type not in SOURCE_TYPES:
            raise ConfigError(f"source type must be one of {', '.join(SOURCE_TYPES)}, got {self.type!r}")
        if not 0.05 <= self.interval_s <= 86400:
            raise ConfigError(f"source {self.measurement}: interval_s must be between 0.05 and 86400")
        if self.type == "command" and not self.command:
            raise ConfigError(f"source {self.measurement}: a command source needs command")
        if self.type == "python" and (not self.entry_point or ":" not in self.entry_point):
            raise ConfigError(f"source {self.measurement}: a python source needs entry_point = 'module:function'")
        if self.type in ("command", "python") and not self.name:
            raise ConfigError(f"a {self.type} source needs a name")
        if "/" in self.measurement:
            raise ConfigError(f"source name {self.measurement!r} must not contain '/'")


DEFAULT_SOURCES = (
    SourceSpec("cpu_temp", 10),
    SourceSpec("load", 10),
    SourceSpec("network", 10),
    SourceSpec("memory", 30),
    SourceSpec("disk", 60, path="/"),
)


@dataclass(frozen=True)
class SensorConfig:
    bootstrap: str = "coap://127.0.0.1:5683"
    topic: str = "readings"
    device: str = field(default_factory=socket.gethostname)
    acks: str = "all"
    state_dir: Path = Path("/var/lib/pikafka/sensor")
    buffer_max_bytes: int = 8 * 1024 * 1024
    buffer_segment_bytes: int = 256 * 1024
    buffer_flush_interval_ms: int = 1000
    delivery_timeout_ms: int = 300_000
    linger_ms: int = 5
    log_level: str = "INFO"
    sources: tuple[SourceSpec, ...] = DEFAULT_SOURCES

    def check(self) -> None:
        if self.acks not in ("0", "1", "all", "-1"):
            raise ConfigError(f"acks must be 0, 1 or all, got {self.acks!r}")
        if not self.topic or not self.device or "/" in self.device:
            raise ConfigError("topic and device must be non-empty (and the device without '/')")
        if not 4096 <= self.buffer_max_bytes <= 1 << 40:
            raise ConfigError("buffer_max_bytes must be at least 4096")
        if not 10 <= self.buffer_flush_interval_ms <= 600_000:
            raise ConfigError("buffer_flush_interval_ms must be between 10 and 600000")
        if not self.delivery_timeout_ms >= 1000:
            raise ConfigError("delivery_timeout_ms must be at least 1000")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
        if not self.sources:
            raise ConfigError("no sources")
        names = [s.measurement for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError("two sources have the same name (give each a distinct name)")
        for source in self.sources:
            source.check()


_TOP: dict[str, type | tuple[type, ...]] = {
    "bootstrap": str,
    "topic": str,
    "device": str,
    "acks": (str, int),
    "state_dir": str,
    "buffer_max_bytes": int,
    "buffer_segment_bytes": int,
    "buffer_flush_interval_ms": int,
    "delivery_timeout_ms": int,
    "linger_ms": int,
    "log_level": str,
}
_SOURCE: dict[str, type | tuple[type, ...]] = {
    "type": str,
    "interval_s": (int, float),
    "name": str,
    "path": str,
    "command": str,
    "entry_point": str,
    "unit": str,
    "timeout_s": (int, float),
}


def _check_type(source: str, key: str, value: Any, expected: type | tuple[type, ...]) -> None:
    if not isinstance(value, expected) or isinstance(value, bool):
        raise ConfigError(f"{source}: {key} has the wrong type")


def config_from_mapping(raw: dict[str, Any], source: str = "config") -> SensorConfig:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "source":
            if not isinstance(value, list):
                raise ConfigError(f"{source}: source must be an array of tables ([[source]])")
            specs = []
            for item in value:
                for k, v in item.items():
                    if k not in _SOURCE:
                        raise ConfigError(f"{source}: unknown source setting {k!r}")
                    _check_type(source, f"source.{k}", v, _SOURCE[k])
                if "type" not in item or "interval_s" not in item:
                    raise ConfigError(f"{source}: every [[source]] needs type and interval_s")
                spec: dict[str, Any] = {k: float(v) if k in ("interval_s", "timeout_s") else v for k, v in item.items()}
                specs.append(SourceSpec(**spec))
            values["sources"] = tuple(specs)
            continue
        if key not in _TOP:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        _check_type(source, key, value, _TOP[key])
        values[key] = Path(value) if key == "state_dir" else (str(value) if key == "acks" else value)
    if "log_level" in values:
        values["log_level"] = values["log_level"].upper()
    return SensorConfig(**values)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi-sensor", description="publish this machine's sensor readings as SenML")
    parser.add_argument("--config", type=Path, help="TOML configuration file; flags below override it")
    parser.add_argument("--bootstrap", help="pikafka broker(s): coap://HOST:PORT[,...]")
    parser.add_argument("--topic", help="topic to publish to (default readings)")
    parser.add_argument("--device", help="device name in keys and SenML base names (default: the host name)")
    parser.add_argument("--acks", choices=("0", "1", "all"), help="producer acks (default all)")
    parser.add_argument("--state-dir", type=Path, help="where the store-and-forward buffer lives")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def load_config(argv: Sequence[str] | None = None) -> SensorConfig:
    args = argument_parser().parse_args(argv)
    config = SensorConfig()
    if args.config is not None:
        config = config_from_mapping(read_toml(args.config), str(args.config))
    overrides = {
        name: getattr(args, name)
        for name in ("bootstrap", "topic", "device", "acks", "state_dir")
        if getattr(args, name) is not None
    }
    if args.log_level is not None:
        overrides["log_level"] = args.log_level.upper()
    config = replace(config, **overrides)
    config.check()
    return config
