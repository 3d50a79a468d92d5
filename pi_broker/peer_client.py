"""Requests from this broker to its peers and the zookeeper, through the service's one aiocoap context.

Everything travels over CoAP over TCP, never UDP. Replication batches are large (one message instead of a
block-wise exchange; bench/replication_transport_bench.py measures it), and the server shares its one UDP socket with
every client it answers: an ICMP "port unreachable" from a dead peer would sit on that socket and make the kernel fail
the next datagram sent, which is an answer to some healthy client (pi_zookeeper/metadata_push.py explains the same
trap). A dead peer over TCP costs only a refused connection.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiocoap
import cbor2
from aiocoap.numbers.codes import Code

from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import CT_CBOR


class PeerUnreachableError(PikafkaError):
    """The peer could not be reached or did not answer in time."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(ErrorCode.BROKER_NOT_AVAILABLE, f"{where}: {reason}")


def tcp_base(host: str, port: int) -> str:
    return f"coap+tcp://{f'[{host}]' if ':' in host else host}:{port}"


class PeerClient:
    def __init__(self) -> None:
        self.context: aiocoap.Context | None = None  # the service's server context, set once it exists

    async def request(
        self, host: str, port: int, method: Code, path: str, body: Any | None, *, timeout_s: float
    ) -> Any:
        """Send one request; returns the decoded CBOR answer (None for an empty one). Raises the PikafkaError an
        error answer names, or PeerUnreachableError."""
        if self.context is None:
            raise PeerUnreachableError(f"{host}:{port}", "the broker's CoAP context is not up yet")
        message = aiocoap.Message(code=method, uri=tcp_base(host, port) + path)
        if body is not None:
            message.payload = cbor2.dumps(body)
            message.opt.content_format = CT_CBOR
        where = f"{host}:{port}{path}"
        pending = self.context.request(message, handle_blockwise=False)
        try:
            async with asyncio.timeout(timeout_s):
                response = await pending.response
        except TimeoutError:
            pending.response.cancel()
            raise PeerUnreachableError(where, f"no answer within {timeout_s:g} s") from None
        except aiocoap.error.LibraryShutdown:
            raise
        except (aiocoap.error.Error, OSError) as exc:
            raise PeerUnreachableError(where, _describe(exc)) from exc
        if not response.code.is_successful():
            raise PikafkaError.from_payload(int(response.code), response.payload)
        if not response.payload:
            return None
        try:
            return cbor2.loads(response.payload)
        except Exception as exc:  # cbor2 raises several types on garbage
            raise PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, f"{where} answered with bad CBOR: {exc}") from None


def _describe(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__
