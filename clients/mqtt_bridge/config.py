"""The bridge's settings: a TOML file, then command-line flags on top (flags win; repeatable route flags add).

```toml
bootstrap = "coap://pi-1.local:5683"
group_id = "mqtt-bridge"
envelope = "none"                   # or "json"
log_level = "INFO"

[mqtt]
url = "mqtts://pi-1.local:8883"     # mqtt://HOST[:1883] or mqtts://HOST[:8883]
protocol = "5"                      # or "3.1.1"
client_id = "pikafka-bridge-pi-1"   # fixed: the persistent session (and its queued messages) is tied to it
username = "bridge"
password_file = "/etc/pikafka/mqtt-bridge.password"
cafile = "/etc/ssl/certs/ca-certificates.crt"
certfile = "/etc/pikafka/bridge.crt"
keyfile = "/etc/pikafka/bridge.key"
keepalive = 30

[[to_mqtt]]
topic = "readings"
template = "pikafka/{topic}/{key}"

[[from_mqtt]]
filter = "commands/#"
topic = "commands"
```
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from clients.mqtt_bridge.routes import FromMqttRoute, ToMqttRoute, check_filter, check_template, overlapping_routes
from pikafka.config_file import ConfigError as ConfigError  # re-exported: the service catches it
from pikafka.config_file import read_toml

PROTOCOLS = ("3.1.1", "5")
ENVELOPES = ("none", "json")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    protocol: str = "3.1.1"
    client_id: str = ""
    username: str | None = None
    password_file: Path | None = None
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    keepalive: int = 30
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    max_inflight: int = 100

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def password(self) -> str | None:
        """The password file's first line (a file, never a flag: flags show up in `ps`)."""
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text().splitlines()[0] if self.password_file.stat().st_size else ""
        except OSError as exc:
            raise ConfigError(f"cannot read the MQTT password file {self.password_file}: {exc.strerror}") from None


@dataclass(frozen=True)
class BridgeConfig:
    bootstrap: str = "coap://127.0.0.1:5683"
    group_id: str = "mqtt-bridge"
    envelope: str = "none"
    log_level: str = "INFO"
    commit_interval_ms: int = 500
    max_pending: int = 1000  # records published but not yet acknowledged by the MQTT broker (memory bound)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    to_mqtt: tuple[ToMqttRoute, ...] = ()
    from_mqtt: tuple[FromMqttRoute, ...] = ()

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"pikafka-bridge-{socket.gethostname()}"

    def check(self) -> None:
        if not self.to_mqtt and not self.from_mqtt:
            raise ConfigError("no routes: give at least one --to-mqtt or --from-mqtt (or [[to_mqtt]] / [[from_mqtt]])")
        if self.envelope not in ENVELOPES:
            raise ConfigError(f"envelope must be one of {', '.join(ENVELOPES)}, got {self.envelope!r}")
        if self.mqtt.protocol not in PROTOCOLS:
            raise ConfigError(f"mqtt protocol must be one of {', '.join(PROTOCOLS)}, got {self.mqtt.protocol!r}")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
        if not self.group_id:
            raise ConfigError("group_id must not be empty")
        if not 10 <= self.commit_interval_ms <= 60_000:
            raise ConfigError("commit_interval_ms must be between 10 and 60000")
        if not 1 <= self.max_pending <= 60_000:
            # MQTT packet ids are 16 bits: far fewer unacknowledged messages than that may be outstanding.
            raise ConfigError("max_pending must be between 1 and 60000")
        if (self.mqtt.certfile is None) != (self.mqtt.keyfile is None):
            raise ConfigError("mqtt certfile and keyfile go together")
        if (self.mqtt.cafile or self.mqtt.certfile) and not self.mqtt.tls:
            raise ConfigError("TLS files given for a plain mqtt:// URL; use mqtts://")
        if self.mqtt.password_file is not None and self.mqtt.username is None:
            raise ConfigError("an MQTT password file needs a username")
        for path in (self.mqtt.password_file, self.mqtt.cafile, self.mqtt.certfile, self.mqtt.keyfile):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path} is not a readable file")
        try:
            for route in self.to_mqtt:
                check_template(route.template)
            for from_route in self.from_mqtt:
                check_filter(from_route.filter)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        overlaps = overlapping_routes(self.to_mqtt, self.from_mqtt)
        if overlaps and self.mqtt.protocol == "3.1.1":
            # MQTT 3.1.1 has no No Local and no user properties: the topics are the only loop guard there.
            f, t = overlaps[0]
            raise ConfigError(
                f"MQTT filter {f.filter!r} could receive what the bridge publishes to {t.template!r} (a loop); "
                "with MQTT 3.1.1 the routes must not overlap (use distinct topic prefixes, or --mqtt-protocol 5)"
            )


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """mqtt://HOST[:PORT] or mqtts://HOST[:PORT] -> (host, port, tls)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{url!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"{url!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def parse_to_mqtt(spec: str) -> ToMqttRoute:
    topic, sep, template = spec.partition("=")
    if not sep or not topic or not template:
        raise ConfigError(f"--to-mqtt wants PIKAFKA_TOPIC=MQTT_TOPIC_TEMPLATE, got {spec!r}")
    return ToMqttRoute(topic, template)


def parse_from_mqtt(spec: str) -> FromMqttRoute:
    # The filter may not contain '=', the pikafka topic name may not either: split at the last one.
    mqtt_filter, sep, topic = spec.rpartition("=")
    if not sep or not topic or not mqtt_filter:
        raise ConfigError(f"--from-mqtt wants MQTT_FILTER=PIKAFKA_TOPIC, got {spec!r}")
    return FromMqttRoute(mqtt_filter, topic)


_MQTT_KEYS: dict[str, type] = {
    "url": str,
    "protocol": str,
    "client_id": str,
    "username": str,
    "password_file": str,
    "cafile": str,
    "certfile": str,
    "keyfile": str,
    "keepalive": int,
    "reconnect_min_s": int,
    "reconnect_max_s": int,
    "max_inflight": int,
}
_TOP_KEYS: dict[str, type] = {
    "bootstrap": str,
    "group_id": str,
    "envelope": str,
    "log_level": str,
    "commit_interval_ms": int,
    "max_pending": int,
}
_PATH_KEYS = ("password_file", "cafile", "certfile", "keyfile")


def _typed(source: str, key: str, value: Any, expected: type) -> Any:
    if not isinstance(value, expected) or isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be {'an integer' if expected is int else 'a string'}")
    return value


def _mqtt_from_mapping(raw: Any, source: str) -> MqttSettings:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [mqtt] must be a table")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        expected = _MQTT_KEYS.get(key)
        if expected is None:
            raise ConfigError(f"{source}: unknown setting mqtt.{key}")
        if key == "protocol" and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # protocol = 5 is the natural way to write it
        value = _typed(source, f"mqtt.{key}", value, expected)
        if key == "url":
            values["host"], values["port"], values["tls"] = parse_mqtt_url(value)
        elif key in _PATH_KEYS:
            values[key] = Path(value)
        else:
            values[key] = value
    return MqttSettings(**values)


def _routes(raw: Any, source: str, name: str, keys: tuple[str, str]) -> list[tuple[str, str]]:
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(f"{source}: {name} must be an array of tables ([[{name}]])")
    out = []
    for item in raw:
        if set(item) != set(keys) or not all(isinstance(item[k], str) and item[k] for k in keys):
            raise ConfigError(f"{source}: each [[{name}]] needs exactly {' and '.join(keys)} (strings)")
        out.append((item[keys[0]], item[keys[1]]))
    return out


def config_from_mapping(raw: dict[str, Any], source: str = "config") -> BridgeConfig:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "mqtt":
            values["mqtt"] = _mqtt_from_mapping(value, source)
        elif key == "to_mqtt":
            values["to_mqtt"] = tuple(
                ToMqttRoute(t, tpl) for t, tpl in _routes(value, source, key, ("topic", "template"))
            )
        elif key == "from_mqtt":
            values["from_mqtt"] = tuple(
                FromMqttRoute(f, t) for f, t in _routes(value, source, key, ("filter", "topic"))
            )
        elif key in _TOP_KEYS:
            values[key] = _typed(source, key, value, _TOP_KEYS[key])
        else:
            raise ConfigError(f"{source}: unknown setting {key!r}")
    if "log_level" in values:
        values["log_level"] = values["log_level"].upper()
    return BridgeConfig(**values)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pi-mqtt-bridge", description="copy records between pikafka topics and an MQTT broker, at least once"
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file; flags below override it")
    parser.add_argument("--bootstrap", help="pikafka broker(s): coap://HOST:PORT[,coap://HOST:PORT...]")
    parser.add_argument("--mqtt", help="MQTT broker: mqtt://HOST:PORT or mqtts://HOST:PORT")
    parser.add_argument("--mqtt-protocol", choices=PROTOCOLS, help="MQTT protocol version (default 3.1.1)")
    parser.add_argument("--mqtt-client-id", help="fixed MQTT client id (default pikafka-bridge-HOSTNAME)")
    parser.add_argument("--mqtt-username", help="MQTT user name")
    parser.add_argument("--mqtt-password-file", type=Path, help="file whose first line is the MQTT password")
    parser.add_argument("--mqtt-cafile", type=Path, help="CA certificate(s) to verify the MQTT broker (mqtts://)")
    parser.add_argument("--mqtt-certfile", type=Path, help="client certificate (with --mqtt-keyfile)")
    parser.add_argument("--mqtt-keyfile", type=Path, help="client private key")
    parser.add_argument(
        "--to-mqtt",
        action="append",
        default=[],
        metavar="PIKAFKA_TOPIC=TEMPLATE",
        help="publish a pikafka topic to MQTT; the template may use {topic}, {key}, {partition} (repeatable)",
    )
    parser.add_argument(
        "--from-mqtt",
        action="append",
        default=[],
        metavar="MQTT_FILTER=PIKAFKA_TOPIC",
        help="produce what an MQTT subscription receives to a pikafka topic (repeatable)",
    )
    parser.add_argument("--group-id", help="consumer group of the pikafka -> MQTT side (default mqtt-bridge)")
    parser.add_argument("--envelope", choices=ENVELOPES, help="MQTT payload: the record value as is, or JSON")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def load_config(argv: Sequence[str] | None = None) -> BridgeConfig:
    args = argument_parser().parse_args(argv)
    config = BridgeConfig()
    if args.config is not None:
        config = config_from_mapping(read_toml(args.config), str(args.config))
    top: dict[str, Any] = {}
    for name in ("bootstrap", "group_id", "envelope"):
        if getattr(args, name) is not None:
            top[name] = getattr(args, name)
    if args.log_level is not None:
        top["log_level"] = args.log_level.upper()
    mqtt: dict[str, Any] = {}
    if args.mqtt is not None:
        mqtt["host"], mqtt["port"], mqtt["tls"] = parse_mqtt_url(args.mqtt)
    for flag, name in (
        ("mqtt_protocol", "protocol"),
        ("mqtt_client_id", "client_id"),
        ("mqtt_username", "username"),
        ("mqtt_password_file", "password_file"),
        ("mqtt_cafile", "cafile"),
        ("mqtt_certfile", "certfile"),
        ("mqtt_keyfile", "keyfile"),
    ):
        if getattr(args, flag) is not None:
            mqtt[name] = getattr(args, flag)
    to_routes = config.to_mqtt + tuple(parse_to_mqtt(s) for s in args.to_mqtt)
    from_routes = config.from_mqtt + tuple(parse_from_mqtt(s) for s in args.from_mqtt)
    config = replace(config, **top, mqtt=replace(config.mqtt, **mqtt), to_mqtt=to_routes, from_mqtt=from_routes)
    config.check()
    return config
