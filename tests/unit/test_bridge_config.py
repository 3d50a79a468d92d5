"""pi-mqtt-bridge configuration: TOML, flags on top, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.mqtt_bridge.config import ConfigError, load_config, parse_mqtt_url
from clients.mqtt_bridge.routes import FromMqttRoute, ToMqttRoute


def test_flags_only():
    config = load_config(
        [
            "--bootstrap",
            "coap://10.0.0.1:5683",
            "--mqtt",
            "mqtt://broker:1884",
            "--to-mqtt",
            "readings=pikafka/{topic}/{key}",
            "--to-mqtt",
            "alerts=alerts/{partition}",
            "--from-mqtt",
            "cmd/#=commands",
            "--mqtt-protocol",
            "5",
        ]
    )
    assert config.to_mqtt == (
        ToMqttRoute("readings", "pikafka/{topic}/{key}"),
        ToMqttRoute("alerts", "alerts/{partition}"),
    )
    assert config.from_mqtt == (FromMqttRoute("cmd/#", "commands"),)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls, config.mqtt.protocol) == ("broker", 1884, False, "5")
    assert config.group_id == "mqtt-bridge"


def test_toml_with_flag_overrides(tmp_path: Path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    path = tmp_path / "bridge.toml"
    path.write_text(
        'bootstrap = "coap://a:5683"\n'
        'group_id = "g1"\n'
        'envelope = "json"\n'
        "[mqtt]\n"
        'url = "mqtts://broker"\n'
        "protocol = 5\n"
        'username = "bridge"\n'
        f'password_file = "{secret}"\n'
        f'cafile = "{ca}"\n'
        "[[to_mqtt]]\n"
        'topic = "readings"\n'
        'template = "out/{key}"\n'
    )
    config = load_config(["--config", str(path), "--group-id", "g2", "--from-mqtt", "in/#=inbound"])
    assert config.group_id == "g2"
    assert config.envelope == "json"
    assert (config.mqtt.port, config.mqtt.tls, config.mqtt.protocol) == (8883, True, "5")
    assert config.mqtt.password() == "s3cret"
    assert len(config.to_mqtt) == 1 and len(config.from_mqtt) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no routes"),
        (["--to-mqtt", "readings"], "PIKAFKA_TOPIC=MQTT_TOPIC_TEMPLATE"),
        (["--to-mqtt", "r=x/{bad}"], "unknown field"),
        (["--from-mqtt", "a/#/b=t"], "malformed"),
        (["--to-mqtt", "r=x/{key}", "--mqtt-cafile", "/etc/hostname"], "mqtts://"),
        (["--to-mqtt", "r=x/{key}", "--mqtt-password-file", "/etc/hostname"], "username"),
        (["--to-mqtt", "r=shared/{key}", "--from-mqtt", "shared/#=t"], "loop"),
    ],
)
def test_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(argv)


def test_overlap_is_allowed_with_mqtt5_thanks_to_no_local():
    config = load_config(["--to-mqtt", "r=shared/{key}", "--from-mqtt", "shared/#=t", "--mqtt-protocol", "5"])
    assert config.mqtt.protocol == "5"


def test_unknown_toml_key(tmp_path: Path):
    path = tmp_path / "b.toml"
    path.write_text("nope = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(["--config", str(path)])


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://h:notaport"])
def test_bad_mqtt_urls(url):
    with pytest.raises(ConfigError):
        parse_mqtt_url(url)
