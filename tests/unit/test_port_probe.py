"""The services' check that nobody serves their port yet: aiocoap binds with SO_REUSEPORT and would share it."""

from __future__ import annotations

import socket

import aiocoap
import aiocoap.resource as resource
import pytest

from pikafka.port_probe import PortInUseError, ensure_port_free
from tests.ports import free_port


def shared_socket(kind: int, port: int) -> socket.socket:
    """A socket bound the way aiocoap binds its own: SO_REUSEPORT, which lets a second binder in unnoticed."""
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


@pytest.fixture
def port() -> int:
    return free_port()


def test_a_port_nobody_holds_passes(port: int) -> None:
    ensure_port_free("127.0.0.1", port)


@pytest.mark.parametrize(("kind", "name"), [(socket.SOCK_DGRAM, "UDP"), (socket.SOCK_STREAM, "TCP")])
def test_a_port_held_over_either_transport_is_refused(port: int, kind: int, name: str) -> None:
    # The owner would let a second REUSEPORT socket bind beside it; the probe must not take that as free.
    refused = pytest.raises(PortInUseError, match=rf"port {port} on 127\.0\.0\.1 is in use over {name}")
    with shared_socket(kind, port), refused:
        ensure_port_free("127.0.0.1", port)
    ensure_port_free("127.0.0.1", port)


def test_a_connection_left_in_time_wait_does_not_hold_the_port(port: int) -> None:
    # A restarted service finds its previous run's closed connections in TIME_WAIT on its port; they own nothing.
    with shared_socket(socket.SOCK_STREAM, port) as listener, socket.create_connection(("127.0.0.1", port)) as peer:
        accepted, _ = listener.accept()
        accepted.close()  # the side that closes first keeps the TIME_WAIT, on the service's port
        assert peer.recv(1) == b""
    ensure_port_free("127.0.0.1", port)


async def test_a_running_aiocoap_server_is_refused_and_its_port_freed_by_shutdown(port: int) -> None:
    context = await aiocoap.Context.create_server_context(resource.Site(), bind=("127.0.0.1", port))
    try:
        with pytest.raises(PortInUseError):
            ensure_port_free("127.0.0.1", port)
    finally:
        await context.shutdown()
    ensure_port_free("127.0.0.1", port)
