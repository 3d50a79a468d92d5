"""The port picker shared by the tests and the benchmarks: ports for services that are yet to bind them."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_ports() -> range:
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


# Every port free_port() has returned in this process (a test session, a benchmark run). A fixture often picks
# several ports before it starts any of the services (a cluster's zookeeper and brokers), so a port it picked is still
# unbound when it picks the next; without this set two brokers of one cluster could draw the same port, which failed a
# CI run, and a benchmark's broker and bare server could, which failed a benchmark run with a bare 4.04.
_handed_out: set[int] = set()


def free_port() -> int:
    """A port free on loopback for both UDP and TCP (the broker binds both), never returned before in this
    process, chosen below the kernel's ephemeral range: a port the kernel handed out (to bind(0) or to any client
    socket's source) can be handed out again to some other socket between this check and the service binding it,
    which failed a CI run with EADDRINUSE."""
    ephemeral = _ephemeral_ports()
    candidates = [p for p in range(10_000, 30_000) if p not in ephemeral] or list(range(10_000, 30_000))
    candidates = [p for p in candidates if p not in _handed_out]
    for port in random.sample(candidates, min(200, len(candidates))):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t,
        ):
            try:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")
