"""A real mosquitto (the Debian package) for the bridge tests: its own config on a free loopback port, started and
stopped (gracefully or with kill -9) by the test.

Without the binary the tests skip with the reason, except under CI=true where a missing mosquitto is a failure
(CI must not pass by skipping).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.processes import stop_gracefully, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
)


def require_mosquitto() -> str:
    if MOSQUITTO is None:
        reason = "mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " and CI=true: the MQTT bridge tests must run in CI")
        pytest.skip(reason)
    return MOSQUITTO


@dataclass
class Mosquitto:
    """One mosquitto process; persistence on, so a graceful restart keeps sessions and their queued messages."""

    directory: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n" + ("user root\n" if os.geteuid() == 0 else "") + "persistence true\n"
            # As root mosquitto would switch to the `mosquitto` user, who cannot write the test's directory.
            f"persistence_location {self.directory}/\n"
            # Queue everything for a persistent session that is away (the default 1000 would drop QoS 1 messages).
            "max_queued_messages 0\n"
            "max_inflight_messages 100\n"
            f"log_dest file {self.directory}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        )

    def start(self, timeout: float = 15.0) -> None:
        binary = require_mosquitto()
        self.write_config()
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.proc, self.port, self.directory / "mosquitto.log", "mosquitto", timeout)

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM: mosquitto closes every connection and saves its persistence file (sessions, queued messages)."""
        if self.proc is not None:
            stop_gracefully(self.proc, 15)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(name="mosquitto")
def mosquitto_fixture(tmp_path: Path) -> Iterator[Mosquitto]:
    require_mosquitto()
    m = Mosquitto(tmp_path / "mosquitto", free_port())
    m.start()
    try:
        yield m
    finally:
        m.stop()


class Subscriber:
    """A paho subscriber with a persistent session (fixed id, QoS 1), so what it misses while mosquitto restarts
    is delivered when it reconnects. Collects (topic, payload) pairs from paho's thread."""

    def __init__(self, port: int, topic_filter: str, client_id: str = "test-subscriber", protocol: str = "3.1.1"):
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        v5 = protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        self.client.reconnect_delay_set(1, 2)

        def on_connect(client, userdata, flags, reason, props):
            client.subscribe(topic_filter, qos=1)

        def on_subscribe(client, userdata, mid, reasons, props):
            self._subscribed.set()

        def on_message(client, userdata, message):
            with self._lock:
                self.messages.append((message.topic, bytes(message.payload)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        if v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            self.client.connect("127.0.0.1", port, keepalive=10, clean_start=False, properties=props)
        else:
            self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(15), "subscriber did not subscribe"

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(condition, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll a condition with a generous deadline (no timed assertions: only a limit on how long we wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class BridgeProcess:
    """`pi-mqtt-bridge` as a real child process (python -m, so no console script is needed)."""

    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import sys

        from tests.conftest import REPO

        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clients.mqtt_bridge.service", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return stop_gracefully(self.proc, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(name="bridge_factory")
def bridge_factory_fixture() -> Iterator[type[BridgeProcess]]:
    """Bridge processes a test starts; any still running at teardown are stopped."""
    made: list[BridgeProcess] = []

    class Factory(BridgeProcess):
        # Registered on start, not in __post_init__: the dataclass __init__ of BridgeProcess (which has no
        # __post_init__) never calls one a subclass adds, so bridges used to outlive their tests.
        def start(self) -> None:
            made.append(self)
            super().start()

    yield Factory
    for b in made:
        if b.alive():
            b.terminate()
