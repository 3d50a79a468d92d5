"""Bridge routes: topic templates, the JSON envelope, MQTT filter matching and the MQTT 3.1.1 loop guard."""

from __future__ import annotations

import base64
import json

import pytest

from clients.mqtt_bridge.routes import (
    FromMqttRoute,
    ToMqttRoute,
    check_filter,
    check_template,
    could_match,
    envelope_json,
    overlapping_routes,
    render_topic,
    topic_matches,
)
from clients.records import ConsumerRecord


def record(key: bytes | None = b"shed/temp", value: bytes | None = b"21.5", headers=()) -> ConsumerRecord:
    return ConsumerRecord("readings", 2, 41, key, value, tuple(headers), 1_700_000_000_000)


def test_render_topic_uses_topic_key_partition():
    assert render_topic("pikafka/{topic}/{partition}/{key}", record()) == "pikafka/readings/2/shed/temp"


def test_render_topic_without_key_and_with_wildcards_in_key():
    assert render_topic("x/{key}", record(key=None)) == "x/_"
    assert render_topic("x/{key}", record(key=b"a+b#")) == "x/a_b_"


@pytest.mark.parametrize("template", ["x/{nope}", "x/+/{key}", "x/#", "x/{key"])
def test_bad_templates_are_refused(template):
    with pytest.raises(ValueError):
        check_template(template)


@pytest.mark.parametrize("bad", ["a/#/b", "a/b#", "a+/b"])
def test_bad_filters_are_refused(bad):
    with pytest.raises(ValueError):
        check_filter(bad)


@pytest.mark.parametrize(
    ("mqtt_filter", "topic", "expected"),
    [
        ("a/#", "a/b/c", True),
        ("a/#", "a", True),
        ("a/+/c", "a/b/c", True),
        ("a/+", "a/b/c", False),
        ("#", "$SYS/x", False),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
    ],
)
def test_topic_matches(mqtt_filter, topic, expected):
    assert topic_matches(mqtt_filter, topic) is expected


@pytest.mark.parametrize(
    ("mqtt_filter", "template", "expected"),
    [
        ("pikafka/#", "pikafka/{topic}/{key}", True),
        ("sensors/#", "pikafka/{topic}/{key}", False),
        ("pikafka/+/x", "pikafka/{topic}/{key}", True),  # the key may be x
        ("pikafka/+", "pikafka/{topic}/{partition}", False),  # one level too few
        ("+/readings/1", "out/{topic}/{partition}", True),
        ("out/readings/1/extra", "out/{topic}/{partition}", False),
        ("out/a/b/c", "out/{key}", True),  # a key holding '/' makes more levels
    ],
)
def test_could_match(mqtt_filter, template, expected):
    assert could_match(mqtt_filter, template) is expected


def test_overlapping_routes_lists_pairs():
    to = (ToMqttRoute("readings", "pikafka/{topic}/{key}"),)
    assert overlapping_routes(to, (FromMqttRoute("sensors/#", "inbound"),)) == []
    assert overlapping_routes(to, (FromMqttRoute("pikafka/#", "inbound"),)) != []


def test_envelope_json_text_and_binary():
    doc = json.loads(envelope_json(record(headers=[("h", b"v"), ("bin", b"\xff"), ("none", None)])))
    assert doc == {
        "topic": "readings",
        "partition": 2,
        "offset": 41,
        "timestamp": 1_700_000_000_000,
        "key": "shed/temp",
        "value": "21.5",
        "headers": [
            {"key": "h", "value": "v"},
            {"key": "bin", "value_b64": base64.b64encode(b"\xff").decode()},
            {"key": "none", "value": None},
        ],
    }
    binary = json.loads(envelope_json(record(key=None, value=b"\x00\xff")))
    assert binary["key"] is None and binary["value_b64"] == "AP8="
