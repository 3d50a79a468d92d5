"""Logging for the services: to the systemd journal with structured fields when running under systemd, else to
stderr exactly as before.

Under systemd (stderr is the journal stream named by $JOURNAL_STREAM, and systemd-python is importable) every record
goes to journald through `systemd.journal.send` with PRIORITY, SYSLOG_IDENTIFIER, LOGGER, CODE_* and these fields:

- BROKER_ID: the broker's id, on every line of a broker (given once to `setup_logging`);
- TOPIC and PARTITION: from `extra={"TOPIC": ..., "PARTITION": ...}`, or found automatically in the log call's
  arguments when one of them names a partition (an object with `topic` and `partition` attributes, like
  pi_broker.partition.TopicPartition, or with a `key` that has them, like a Partition);
- any other upper-case `extra` key.

So `journalctl -u pi-broker TOPIC=readings PARTITION=2` finds every line about one partition.

systemd-python is optional: on a Pi it comes from the OS package python3-systemd (the venv is created with
--system-site-packages); in a development venv it is usually absent and nothing changes.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# logging level -> syslog priority (what journalctl -p filters on)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

SendFunction = Callable[..., Any]


def journal_send_function() -> SendFunction | None:
    """`systemd.journal.send` when systemd-python is installed, else None."""
    try:
        journal = importlib.import_module("systemd.journal")
    except ImportError:
        return None
    send: SendFunction = journal.send
    return send


def stderr_is_journal(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True when systemd connected our stderr to the journal (sd_journal_stream_fd's $JOURNAL_STREAM = dev:inode)."""
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def priority(levelno: int) -> int:
    for level, prio in _PRIORITIES:
        if levelno >= level:
            return prio
    return 7  # debug


def partition_fields(args: object) -> dict[str, str]:
    """TOPIC and PARTITION from the first log argument that names a partition."""
    candidates = args if isinstance(args, tuple) else (args,)
    for arg in candidates:
        for obj in (arg, getattr(arg, "key", None)):
            topic = getattr(obj, "topic", None)
            part = getattr(obj, "partition", None)
            if isinstance(topic, str) and isinstance(part, int) and not isinstance(part, bool):
                return {"TOPIC": topic, "PARTITION": str(part)}
    return {}


class JournalHandler(logging.Handler):
    """Sends each record to journald as one entry with structured fields (see the module docstring)."""

    def __init__(self, send: SendFunction, identifier: str, fields: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self._send = send
        self._fields = {"SYSLOG_IDENTIFIER": identifier, **{k.upper(): str(v) for k, v in (fields or {}).items()}}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + (self.formatter or logging.Formatter()).formatException(record.exc_info)
            entry: dict[str, str] = dict(self._fields)
            entry.update(partition_fields(record.args))
            for key, value in record.__dict__.items():
                if key.isupper() and key.replace("_", "").isalnum():
                    entry[key] = str(value)
            self._send(
                message,
                PRIORITY=str(priority(record.levelno)),
                LOGGER=record.name,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                THREAD_NAME=record.threadName or "",
                **entry,
            )
        except Exception:
            self.handleError(record)


def setup_logging(
    level: str | int,
    identifier: str,
    fields: Mapping[str, object] | None = None,
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Configure the root logger; returns True when records go to the journal, False for stderr."""
    stream = stream or sys.stderr
    send = journal_send_function() if stderr_is_journal(stream, environ) else None
    handler: logging.Handler
    if send is not None:
        handler = JournalHandler(send, identifier, fields)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return send is not None
