"""Replace a small JSON file so that a crash leaves either the old or the new version, never a torn one.

The sequence is the classic one: write a temporary file in the same directory (so the rename stays within one file
system), fsync it, rename it over the target, then fsync the directory so the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, document: Any) -> None:
    """Durably replace `path` with `document` encoded as JSON."""
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # The temporary file is ours alone; never leave it behind on failure.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_directory(directory)


def read_json(path: Path) -> Any:
    """Read a JSON document written by `write_json_atomic`; FileNotFoundError when it was never written."""
    with open(path, "rb") as f:
        return json.loads(f.read())


def fsync_directory(directory: Path) -> None:
    """Make entries created, renamed or removed in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
