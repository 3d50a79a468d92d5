"""What every test or benchmark that runs a real service process needs: wait until it listens, stop it gracefully."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def wait_for_port(proc: subprocess.Popen[Any], port: int, log_path: Path | None, what: str, timeout: float) -> None:
    """Return once the process accepts TCP connections on the loopback port (the services bind after recovering
    their state, so this also means "ready"); raise with the process log if it exits or never listens (log_path
    None: the process has no log file of its own, as the benchmarks' servers, which write to the terminal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_read(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as probe:
                # Linux lets a loopback connect to an unbound port in the ephemeral range pick that same port as its
                # source and "connect" to itself (TCP simultaneous open): that is not the service listening.
                if probe.getsockname() != probe.getpeername():
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout}s:\n{_read(log_path)}")


def _read(log_path: Path | None) -> str:
    if log_path is None:
        return "(no log file)"
    return log_path.read_text(errors="replace") if log_path.exists() else "(no log)"


def stop_gracefully(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM and wait; SIGKILL if it overstays. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)
