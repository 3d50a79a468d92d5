"""CoAP requests to pikafka brokers over one shared aiocoap client context.

Every Producer, Consumer and Admin in a process (per event loop, since an aiocoap context belongs to the loop that
made it) borrows the same context: a context per request or per client would open sockets and TCP connections that
are only released at shutdown. The context is made on first use, counted, and shut down when its last user closes.

Produce and fetch travel over CoAP over TCP (RFC 8323): one message per request instead of hundreds of lock-step
block-wise round trips over UDP.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiocoap
import cbor2
from aiocoap.numbers.codes import Code
from aiocoap.transports import rfc8323common

from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import CT_CBOR, DEFAULT_PORT

# RFC 8323 lets each side announce the largest message it accepts (CSM Max-Message-Size); aiocoap hard-codes 1 MiB.
# A fetch answer always holds at least one whole batch, which may itself be up to a topic's max_message_bytes, so a
# 1 MiB limit would make the library abort the connection on an ordinary response. Announce more.
RECEIVE_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# aiocoap switches to block-wise transfer above about the peer's announced 1 MiB; keep each request below that so it
# travels as one message (brokers handle concurrent block-wise uploads badly).
MAX_REQUEST_BYTES = 1024 * 1024 - 16 * 1024
# CoAP No-Response option (RFC 7967): 2 | 8 | 16 suppresses every response class.
NO_RESPONSE_ALL = 26


def _announce_larger_messages() -> None:
    if rfc8323common.RFC8323Remote._my_max_message_size < RECEIVE_MAX_MESSAGE_BYTES:
        rfc8323common.RFC8323Remote._my_max_message_size = RECEIVE_MAX_MESSAGE_BYTES


_announce_larger_messages()


class BrokerUnreachableError(PikafkaError):
    """The broker could not be reached or did not answer in time (connection refused, reset, timeout).

    Always retriable: the caller should refresh metadata and try again, possibly elsewhere."""

    def __init__(self, address: str, reason: str, *, timed_out: bool = False) -> None:
        if timed_out:
            super().__init__(ErrorCode.REQUEST_TIMED_OUT, f"{address} did not answer: {reason}")
        else:
            super().__init__(ErrorCode.BROKER_NOT_AVAILABLE, f"cannot reach {address}: {reason}")
        self.address = address


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where one broker listens; the same port serves CoAP over UDP and over TCP."""

    host: str
    port: int = DEFAULT_PORT

    @property
    def tcp_base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"coap+tcp://{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_bootstrap(bootstrap: str | list[str] | tuple[str, ...]) -> list[BrokerAddress]:
    """`coap://HOST:PORT[,coap://HOST2:PORT]` (or a list of them) -> addresses; the scheme may be omitted."""
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    out: list[BrokerAddress] = []
    for raw in items:
        text = raw.strip()
        if not text:
            continue
        if "://" not in text:
            text = "coap://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("coap", "coap+tcp") or not parts.hostname:
            raise ValueError(f"bootstrap address {raw.strip()!r} is not coap://HOST:PORT")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise ValueError(f"bootstrap address {raw.strip()!r} has a bad port") from exc
        out.append(BrokerAddress(parts.hostname, port))
    if not out:
        raise ValueError("no bootstrap address given")
    return out


@dataclass(frozen=True, slots=True)
class CoapResponse:
    code: int
    payload: bytes
    content_format: int | None

    def cbor(self) -> Any:
        return cbor2.loads(self.payload) if self.payload else None


class _SharedContext:
    def __init__(self) -> None:
        self.context: aiocoap.Context | None = None
        self.users = 0
        self.lock = asyncio.Lock()


_contexts: dict[asyncio.AbstractEventLoop, _SharedContext] = {}


class CoapTransport:
    """A client's handle on the process-wide CoAP context: `open()` once, `request()` many times, `close()` once."""

    def __init__(self) -> None:
        self._shared: _SharedContext | None = None

    @property
    def is_open(self) -> bool:
        return self._shared is not None

    async def open(self) -> None:
        if self._shared is not None:
            return
        loop = asyncio.get_running_loop()
        shared = _contexts.setdefault(loop, _SharedContext())
        async with shared.lock:
            if shared.context is None:
                shared.context = await aiocoap.Context.create_client_context()
            shared.users += 1
        self._shared = shared

    async def close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is None:
            return
        async with shared.lock:
            shared.users -= 1
            if shared.users > 0 or shared.context is None:
                return
            context, shared.context = shared.context, None
            _contexts.pop(asyncio.get_running_loop(), None)
            await context.shutdown()

    def _context(self) -> aiocoap.Context:
        if self._shared is None or self._shared.context is None:
            raise RuntimeError("the client is not started (use `async with` or await start())")
        return self._shared.context

    async def request(
        self,
        broker: BrokerAddress,
        method: Code,
        path: str,
        *,
        body: Any = None,
        timeout_s: float,
        accept_cbor: bool = False,
    ) -> CoapResponse:
        """Send one request; returns a 2.xx response, raises PikafkaError for an error response and
        BrokerUnreachableError when the broker cannot be reached or does not answer within timeout_s."""
        msg = self._message(broker, method, path, body)
        if accept_cbor:
            msg.opt.accept = CT_CBOR
        req = self._context().request(msg, handle_blockwise=False)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation racing with the answer.
            async with asyncio.timeout(timeout_s):
                response = await req.response
        except TimeoutError:
            self._drop_connection(broker)
            raise BrokerUnreachableError(str(broker), f"no answer within {timeout_s:g}s", timed_out=True) from None
        except aiocoap.error.LibraryShutdown:
            raise
        except (aiocoap.error.Error, OSError) as exc:
            self._drop_connection(broker)
            raise BrokerUnreachableError(str(broker), _describe_network_error(exc)) from exc
        code = int(response.code)
        if not response.code.is_successful():
            raise PikafkaError.from_payload(code, response.payload)
        return CoapResponse(code, response.payload, response.opt.content_format)

    async def send_without_response(self, broker: BrokerAddress, method: Code, path: str, *, body: Any) -> None:
        """Hand a request to the connection and forget it (No-Response): used by acks=0 produce.

        Raises BrokerUnreachableError when there is no connection to write it to."""
        msg = self._message(broker, method, path, body)
        msg.opt.no_response = NO_RESPONSE_ALL
        req = self._context().request(msg, handle_blockwise=False)
        # aiocoap writes the request from a task it schedules; with the TCP connection already open (clients fetch
        # metadata over it first) that task finishes within a loop step or two. Give it those steps, then drop our
        # interest so aiocoap forgets the token instead of waiting forever for an answer that will not come.
        for _ in range(3):
            await asyncio.sleep(0)
        if req.response.done() and not req.response.cancelled():
            exc = req.response.exception()
            if exc is not None:
                raise BrokerUnreachableError(str(broker), _describe_network_error(exc)) from exc
        req.response.cancel()

    def _drop_connection(self, broker: BrokerAddress) -> None:
        """After a request to `broker` failed or went unanswered, close the pooled TCP connection to it, so that the
        retry opens a fresh one.

        aiocoap keeps a connection in its pool until asyncio reports it lost, and reuses it for every request to that
        address meanwhile. A connection whose peer vanished without a reset (its host lost power) or that asyncio
        has failed without the loss reaching aiocoap yet would swallow each retry until TCP itself gives up, minutes
        later. Requests still waiting on the same connection fail with it and are retried by their callers, which
        all retry idempotently."""
        if self._shared is None or self._shared.context is None:
            return
        for interface in self._shared.context.request_interfaces:
            # aiocoap's TCP client files its connections by (host, port), as in the request's URI (aiocoap/tcp.py).
            pool = getattr(getattr(interface, "token_interface", None), "_pool", None)
            if not isinstance(pool, dict):
                continue
            connection = pool.pop((broker.host, broker.port), None)
            transport = getattr(connection, "_transport", None)
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # aiocoap hears connection_lost and fails what else waited on it

    @staticmethod
    def _message(broker: BrokerAddress, method: Code, path: str, body: Any) -> aiocoap.Message:
        msg = aiocoap.Message(code=method, uri=broker.tcp_base + path)
        if body is not None:
            msg.payload = cbor2.dumps(body)
            msg.opt.content_format = CT_CBOR
        return msg


def _describe_network_error(exc: BaseException) -> str:
    """The most telling reason in the chain: aiocoap wraps "Connection refused" in a generic NetworkError."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, aiocoap.error.NetworkError):
        # aiocoap's own text for these is just the class name; say what it means.
        return "the connection failed or was closed by the other side"
    return str(exc) or type(exc).__name__


async def request_first_reachable(
    transport: CoapTransport,
    brokers: Sequence[BrokerAddress],
    method: Code,
    path: str,
    *,
    body: Any = None,
    timeout_s: float,
) -> CoapResponse:
    """For requests any broker can answer (admin, describe): try each broker until one is reachable."""
    last: BrokerUnreachableError | None = None
    for broker in dict.fromkeys(brokers):
        try:
            return await transport.request(broker, method, path, body=body, timeout_s=timeout_s, accept_cbor=True)
        except BrokerUnreachableError as exc:
            last = exc
    if last is None:
        raise ValueError("no broker to ask")
    raise last
