"""The sd_notify protocol as systemd sees it: a real AF_UNIX datagram socket as $NOTIFY_SOCKET and real
`pi-zookeeper` / `pi-broker` processes sending READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port

VENV_BIN = Path(sys.executable).parent


class NotifySocket:
    """What systemd does for Type=notify: bind a datagram socket and read KEY=VALUE lines from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def receive_until(self, predicate, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)
            if predicate(fields):
                return fields
        raise AssertionError(f"no matching notification within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def _spawn(args: list[str], notify: NotifySocket, watchdog_usec: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(watchdog_usec))
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes], notify: NotifySocket) -> None:
    proc.send_signal(signal.SIGTERM)
    notify.receive_until(lambda f: f.get("STOPPING") == "1", timeout=10)
    assert proc.wait(timeout=10) == 0


def test_zookeeper_and_broker_speak_sd_notify(tmp_path: Path, notify_socket: NotifySocket):
    broker_notify = NotifySocket(tmp_path / "broker-notify.sock")
    zk_port, broker_port = free_port(), free_port()
    zk = _spawn(
        [
            str(VENV_BIN / "pi-zookeeper"),
            "--bind",
            "127.0.0.1",
            "--port",
            str(zk_port),
            "--data-dir",
            str(tmp_path / "zk"),
        ],
        notify_socket,
        watchdog_usec=1_000_000,
    )
    broker = None
    try:
        ready = notify_socket.receive_until(lambda f: "READY" in f, timeout=20)
        assert ready["READY"] == "1"
        assert "listening on 127.0.0.1" in ready["STATUS"]
        # READY means bound: the port answers at once.
        with socket.create_connection(("127.0.0.1", zk_port), timeout=2):
            pass
        # Watchdog every WATCHDOG_USEC/2 from the event loop.
        started = time.monotonic()
        notify_socket.receive_until(lambda f: f.get("WATCHDOG") == "1", timeout=3)
        notify_socket.receive_until(lambda f: f.get("WATCHDOG") == "1", timeout=3)
        assert time.monotonic() - started < 2.5
        status = notify_socket.receive_until(lambda f: "brokers alive" in f.get("STATUS", ""), timeout=6)
        assert status["STATUS"] == "0 of 0 brokers alive, 0 partitions, 0 offline"

        broker = _spawn(
            [
                str(VENV_BIN / "pi-broker"),
                "--id",
                "7",
                "--bind",
                "127.0.0.1",
                "--port",
                str(broker_port),
                "--data-dir",
                str(tmp_path / "broker"),
                "--zookeeper",
                f"coap://127.0.0.1:{zk_port}",
            ],
            broker_notify,
            watchdog_usec=2_000_000,
        )
        ready = broker_notify.receive_until(lambda f: "READY" in f, timeout=20)
        assert f"broker 7 serving coap://127.0.0.1:{broker_port}" in ready["STATUS"]
        broker_notify.receive_until(lambda f: f.get("WATCHDOG") == "1", timeout=3)
        status = broker_notify.receive_until(lambda f: "leader for" in f.get("STATUS", ""), timeout=6)
        assert status["STATUS"] == "broker 7: leader for 0 of 0 partitions"
        notify_socket.receive_until(lambda f: f.get("STATUS", "").startswith("1 of 1 broker alive"), timeout=8)

        _stop(broker, broker_notify)
        _stop(zk, notify_socket)
    finally:
        for proc in (broker, zk):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        broker_notify.close()


def test_watchdog_for_another_pid_is_ignored(tmp_path: Path, notify_socket: NotifySocket):
    """WATCHDOG_PID names the process systemd watches; a child that inherited the variables must stay silent."""
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env.update(NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "pi-zookeeper"),
            "--bind",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "zk"),
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        notify_socket.receive_until(lambda f: "READY" in f, timeout=20)
        with pytest.raises(AssertionError):
            notify_socket.receive_until(lambda f: f.get("WATCHDOG") == "1", timeout=1.0)
        _stop(proc, notify_socket)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
