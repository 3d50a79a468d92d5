"""The life of every pikafka service process: start, serve until SIGTERM/SIGINT, stop gracefully.

Shaped like uvicorn's server loop (startup -> main loop -> shutdown). systemd is told where we are through the
sd_notify protocol: one datagram per state change on the AF_UNIX socket named by $NOTIFY_SOCKET (READY=1 once the
service answers requests, STATUS=... for `systemctl status`, WATCHDOG=1 as a heartbeat, STOPPING=1 on shutdown).
Outside systemd the variable is unset and notifying does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)

# How often a service's STATUS= line is recomputed (it is sent only when it changed).
STATUS_INTERVAL_S = 2.0


class SystemdNotifier:
    """Sends sd_notify datagrams; a silent no-op when $NOTIFY_SOCKET is unset or unreachable."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        if address:
            # A leading '@' names a socket in the Linux abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            # Losing a status line must never take the service down.
            log.debug("sd_notify to %r failed: %s", self._address, exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd asked for (WATCHDOG_USEC), or None when there is no watchdog."""
    raw = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not raw or (pid and pid != str(os.getpid())):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


class Service(Protocol):
    """What `run_service` drives. `start` returns once the service answers requests; `stop` releases everything."""

    async def start(self) -> str:
        """Start serving; returns a one-line status for the log and systemd."""
        ...

    async def stop(self) -> None: ...


@runtime_checkable
class ReportsStatus(Protocol):
    """A service that can say in one line how it is doing (shown by `systemctl status` as "Status: ...")."""

    def status_line(self) -> str: ...


async def run_service(
    service: Service, notifier: SystemdNotifier | None = None, *, status_interval_s: float = STATUS_INTERVAL_S
) -> int:
    """Start `service`, serve until SIGTERM or SIGINT, stop it; returns the process exit code.

    READY=1 is sent only once `service.start()` has returned (logs recovered, sockets bound). While serving, a
    service that implements `status_line()` has its STATUS= refreshed every `status_interval_s` when the line
    changed, and WATCHDOG=1 is sent every half watchdog period when systemd asked for one; both run on the event
    loop. STOPPING=1 goes out before `service.stop()`.
    """
    notifier = notifier or SystemdNotifier()
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    tasks: list[asyncio.Task[None]] = []
    try:
        status = await service.start()
        log.info("%s", status)
        notifier.ready(status)
        interval = watchdog_interval_s()
        if interval is not None and notifier.enabled:
            tasks.append(asyncio.create_task(_feed_watchdog(notifier, interval), name="watchdog"))
        if isinstance(service, ReportsStatus) and notifier.enabled:
            tasks.append(asyncio.create_task(_report_status(notifier, service, status_interval_s), name="status"))
        await stop_requested.wait()
        log.info("stop requested, shutting down")
        notifier.notify("STOPPING=1", "STATUS=stopping: flushing and closing")
    finally:
        for task in tasks:
            task.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await service.stop()
    return 0


async def _report_status(notifier: SystemdNotifier, service: ReportsStatus, interval_s: float) -> None:
    last = ""
    while True:
        await asyncio.sleep(interval_s)
        try:
            line = service.status_line()
        except Exception:
            # A status line is a courtesy; a bug computing it must not stop the service or the heartbeat.
            log.exception("computing the status line failed")
            continue
        if line != last:
            notifier.status(line)
            log.debug("status: %s", line)
            last = line


async def _feed_watchdog(notifier: SystemdNotifier, interval_s: float) -> None:
    # The heartbeat runs on the event loop on purpose: a wedged loop stops it and systemd restarts us.
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)
