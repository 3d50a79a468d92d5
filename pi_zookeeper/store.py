"""The zookeeper's state on disk: `<data_dir>/cluster.json`, readable indented JSON, replaced atomically.

The prototype kept its broker list in a JSON file too; this one is written through pikafka.atomic_file (temporary
file, fsync, rename, fsync of the directory), so after a crash at any instant the file is either the previous or the
next complete document. A file that cannot be parsed is never overwritten: the service refuses to start instead, since
writing a fresh state would mint a new cluster id and orphan every broker's data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from pi_zookeeper.state import ClusterState
from pikafka.atomic_file import read_json, write_json_atomic

STATE_FILE = "cluster.json"
LOCK_FILE = ".lock"


class StateFileError(Exception):
    """The state file exists but is not a usable state; the message is one line for the operator."""


class StateStore:
    """Owns a data directory: an exclusive lock on it while open, and the state file inside."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / STATE_FILE
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the directory if needed and lock it, so two zookeepers never share (and clobber) one state."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateFileError(f"{self.data_dir} is in use by another zookeeper") from None
        self._lock_fd = fd
        # A crash between writing and renaming leaves a temporary file; it is never the state, so drop it.
        for leftover in self.data_dir.glob(f".{STATE_FILE}.*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def load(self, session_timeout: float, now: float) -> ClusterState | None:
        """The saved state, or None when there is none yet; StateFileError when the file is unusable."""
        try:
            document = read_json(self.path)
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateFileError(f"{self.path}: cannot parse: {exc}") from None
        try:
            return ClusterState.from_json(document, session_timeout=session_timeout, now=now)
        except ValueError as exc:
            raise StateFileError(f"{self.path}: {exc}") from None

    def save(self, state: ClusterState) -> None:
        write_json_atomic(self.path, state.to_json())
