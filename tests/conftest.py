"""Shared fixtures: real broker processes on loopback, real sockets, real files."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.processes import stop_gracefully, wait_for_port

REPO = Path(__file__).resolve().parent.parent

# The cluster fixtures (a zookeeper and N brokers as real processes) for the replication and fault tests.
pytest_plugins = ["tests.cluster_fixtures"]


@dataclass
class BrokerProcess:
    """A `pi-broker` running as a real child process; restartable on the same port and data directory."""

    data_dir: Path
    port: int
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    broker_id: int = 1
    zookeeper: str | None = None  # coap://HOST:PORT: a clustered broker (tests/cluster_fixtures.py)

    def __post_init__(self) -> None:
        """Hook for fixtures that track every broker they make (see broker_factory)."""

    @property
    def url(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "pi_broker.service",
            "--id",
            str(self.broker_id),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *(["--zookeeper", self.zookeeper] if self.zookeeper else []),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        wait_for_port(self.proc, self.port, self.log_path, "broker", timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        return stop_gracefully(self.proc, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def running_broker(tmp_path: Path, extra_args: list[str] | None = None) -> Iterator[BrokerProcess]:
    """One standalone broker on a free loopback port with its own data directory, stopped on exit."""
    b = BrokerProcess(
        data_dir=tmp_path / "broker-data",
        port=free_port(),
        log_path=tmp_path / "broker.log",
        extra_args=list(extra_args or []),
    )
    b.start()
    try:
        yield b
    finally:
        if b.alive():
            b.terminate()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """One standalone broker on a free loopback port with its own data directory."""
    with running_broker(tmp_path) as b:
        yield b


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[type[BrokerProcess]]:
    """For tests that need to choose broker arguments or restart brokers; all are stopped at teardown."""
    made: list[BrokerProcess] = []

    class Factory(BrokerProcess):
        def __post_init__(self) -> None:
            made.append(self)

    yield Factory
    for b in made:
        if b.alive():
            b.terminate()


os.environ.setdefault("PYTHONUNBUFFERED", "1")
