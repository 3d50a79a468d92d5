"""Routes between pikafka topics and MQTT topics: template rendering, the JSON envelope, and the loop guard.

The loop guard: a message the bridge published must never be bridged back into pikafka. With MQTT 5 the bridge's
subscriptions carry No Local (the broker never sends the bridge its own messages) and every message it publishes
carries the user property `pikafka-bridge`, which a bridge drops on the way in (that also stops ping-pong between two
bridges). MQTT 3.1.1 has neither, so there the guard is by topic: the bridge refuses to start when a --from-mqtt
filter could match a topic one of its --to-mqtt templates produces (`overlapping_routes`).
"""

from __future__ import annotations

import base64
import json
import string
from dataclasses import dataclass
from typing import Any

from clients.records import ConsumerRecord

TEMPLATE_FIELDS = frozenset({"topic", "key", "partition"})
LOOP_PROPERTY = "pikafka-bridge"
# Placeholder a rendered key or topic uses where the record has none.
NO_KEY = "_"


@dataclass(frozen=True)
class ToMqttRoute:
    """Records of pikafka topic `topic` are published to the MQTT topic the template renders."""

    topic: str
    template: str


@dataclass(frozen=True)
class FromMqttRoute:
    """Messages of MQTT subscription `filter` are produced to pikafka topic `topic` (keyed by their MQTT topic)."""

    filter: str
    topic: str


def _template_fields(template: str) -> list[str]:
    try:
        return [name for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"MQTT topic template {template!r}: {exc}") from None


def check_template(template: str) -> None:
    names = _template_fields(template)
    unknown = [n for n in names if n not in TEMPLATE_FIELDS]
    if unknown:
        raise ValueError(
            f"MQTT topic template {template!r}: unknown field {{{unknown[0]}}} (use topic, key, partition)"
        )
    literal = "".join(text for text, *_ in string.Formatter().parse(template))
    if "+" in literal or "#" in literal:
        raise ValueError(f"MQTT topic template {template!r} contains a wildcard")


def check_filter(mqtt_filter: str) -> None:
    levels = mqtt_filter.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            raise ValueError(f"MQTT filter {mqtt_filter!r} is malformed ('#' only last, '+' a whole level)")


def _safe(text: str) -> str:
    # Wildcards and NUL cannot appear in a topic name a client publishes to.
    return text.replace("+", "_").replace("#", "_").replace("\0", "_") or NO_KEY


def render_topic(template: str, record: ConsumerRecord) -> str:
    """The MQTT topic of one record. A key may contain '/', which makes extra topic levels (device/room/sensor)."""
    key = NO_KEY if record.key is None else _safe(record.key.decode("utf-8", "replace"))
    return template.format(topic=_safe(record.topic), key=key, partition=record.partition)


def _text_or_b64(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {}
    try:
        return {"": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"_b64": base64.b64encode(data).decode("ascii")}


def envelope_json(record: ConsumerRecord) -> bytes:
    """`--envelope json`: the record with its coordinates. Text goes as a string, other bytes as base64 under
    `<field>_b64` (key_b64, value_b64, a header's value_b64)."""
    doc: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
    }
    for name, data in (("key", record.key), ("value", record.value)):
        doc.update({name + suffix: v for suffix, v in _text_or_b64(data).items()} if data is not None else {name: None})
    headers = []
    for hname, hvalue in record.headers:
        entry: dict[str, Any] = {"key": hname}
        entry.update(
            {"value" + s: v for s, v in _text_or_b64(hvalue).items()} if hvalue is not None else {"value": None}
        )
        headers.append(entry)
    doc["headers"] = headers
    return json.dumps(doc, separators=(",", ":")).encode()


def topic_matches(mqtt_filter: str, topic: str) -> bool:
    """MQTT filter matching (topics starting with '$' are not matched by leading wildcards)."""
    f_levels, t_levels = mqtt_filter.split("/"), topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels) or (f != "+" and f != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def _template_levels(template: str) -> list[str | None]:
    """A template's topic levels: literal text, or None for a level with a placeholder in it (any text there)."""
    out: list[str | None] = []
    for level in template.split("/"):
        out.append(None if "{" in level.replace("{{", "") else level.replace("{{", "{").replace("}}", "}"))
    return out


def could_match(mqtt_filter: str, template: str) -> bool:
    """Could a topic rendered from `template` match `mqtt_filter`? Conservative: a level holding {key} may expand to
    several levels (keys may contain '/'), so after such a level anything is possible."""
    f_levels = mqtt_filter.split("/")
    t_levels = _template_levels(template)
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        t = t_levels[i]
        if t is None:
            if "{key}" in template.split("/")[i]:
                return True  # the key may hold more levels: the rest can match anything
            continue
        if f != "+" and f != t:
            return False
    # Every rendered level is non-empty text, so a filter without '#' must have exactly the template's levels.
    return len(f_levels) == len(t_levels)


def overlapping_routes(
    to_routes: tuple[ToMqttRoute, ...], from_routes: tuple[FromMqttRoute, ...]
) -> list[tuple[FromMqttRoute, ToMqttRoute]]:
    return [(f, t) for f in from_routes for t in to_routes if could_match(f.filter, t.template)]
