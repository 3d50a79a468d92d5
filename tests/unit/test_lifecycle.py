"""sd_notify datagrams and the atomic JSON writer, against a real AF_UNIX socket and real files."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from pikafka.atomic_file import read_json, write_json_atomic
from pikafka.lifecycle import SystemdNotifier


def test_notifier_sends_datagrams(tmp_path: Path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(2)
        notifier = SystemdNotifier(address)
        notifier.ready("serving")
        assert server.recv(4096) == b"READY=1\nSTATUS=serving"
        notifier.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
        notifier.stopping()
        assert server.recv(4096) == b"STOPPING=1"


def test_notifier_without_socket_is_silent(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    SystemdNotifier().ready("x")  # no socket configured: nothing happens
    SystemdNotifier(str(tmp_path / "absent.sock")).ready("x")  # nobody listening: nothing happens either


def test_atomic_json_replaces_whole_file(tmp_path: Path):
    path = tmp_path / "sub" / "doc.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2, "b": [1, 2]})
    assert read_json(path) == {"a": 2, "b": [1, 2]}
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["doc.json"]  # no temporary file left behind
