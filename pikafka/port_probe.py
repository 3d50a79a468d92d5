"""Refuse to serve on a port that another process serves.

aiocoap binds its UDP and TCP sockets with SO_REUSEPORT, so a second service started on a taken port would bind
too, and the kernel would silently spread the datagrams and connections over both processes: a client would get
answers from whichever it drew (a benchmark once got 4.04 for `/metadata` from a bare server that shared the broker's
port). A probe socket without SO_REUSEPORT fails with EADDRINUSE instead, so a service can say so and exit.
"""

from __future__ import annotations

import socket


class PortInUseError(OSError):
    """Something is already bound to the address a service was told to serve on."""


def ensure_port_free(host: str, port: int) -> None:
    """Raise PortInUseError when any socket is bound to host:port over UDP or TCP."""
    for kind, transport in ((socket.SOCK_DGRAM, "UDP"), (socket.SOCK_STREAM, "TCP")):
        family, sock_type, proto, _, address = socket.getaddrinfo(host, port, type=kind)[0]
        with socket.socket(family, sock_type, proto) as probe:
            if kind == socket.SOCK_STREAM:
                # A connection of an earlier run left in TIME_WAIT owns nothing. Not for UDP: on Linux two UDP
                # sockets that both set SO_REUSEADDR may share a port, which is what the probe must not allow.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise PortInUseError(
                    exc.errno, f"port {port} on {host} is in use over {transport} ({exc.strerror})"
                ) from None
