"""Topic administration and cluster metadata: create, list, describe and delete topics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from aiocoap.numbers.codes import Code

from clients.transport import CoapTransport, parse_bootstrap, request_first_reachable
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import DEFAULT_PORT, check_topic_name

DEFAULT_BOOTSTRAP = f"coap://127.0.0.1:{DEFAULT_PORT}"


class Admin:
    """Answers come back as the broker sent them (see docs/protocol.md for their fields).

    Use as `async with Admin(url) as admin:`, or call methods directly and `await admin.close()` at the end."""

    def __init__(self, bootstrap: str | Sequence[str] = DEFAULT_BOOTSTRAP, *, request_timeout_ms: int = 10_000) -> None:
        self._brokers = parse_bootstrap(bootstrap if isinstance(bootstrap, str) else list(bootstrap))
        self._timeout_s = request_timeout_ms / 1000
        self._transport = CoapTransport()

    async def start(self) -> None:
        await self._transport.open()

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> Admin:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _request(self, method: Code, path: str, body: Any = None) -> Any:
        if not self._transport.is_open:
            # Admin calls are occasional one-offs: connect on first use, so `async with` is optional (close() still
            # releases the shared connection).
            await self._transport.open()
        response = await request_first_reachable(
            self._transport, self._brokers, method, path, body=body, timeout_s=self._timeout_s
        )
        try:
            return response.cbor()
        except ValueError as exc:
            raise PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, f"undecodable answer from {path}: {exc}") from exc

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = 1,
        config: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        check_topic_name(name)
        body = {
            "name": name,
            "partitions": partitions,
            "replication_factor": replication_factor,
            "config": dict(config or {}),
        }
        answer = await self._request(Code.POST, "/topics", body)
        return dict(answer) if isinstance(answer, Mapping) else {"name": name, "partitions": partitions}

    async def list_topics(self) -> list[str]:
        answer = await self._request(Code.GET, "/topics")
        return [str(name) for name in answer["topics"]]

    async def describe_topic(self, name: str) -> dict[str, Any]:
        check_topic_name(name)
        return dict(await self._request(Code.GET, f"/topics/{name}"))

    async def delete_topic(self, name: str) -> None:
        check_topic_name(name)
        await self._request(Code.DELETE, f"/topics/{name}")

    async def metadata(self) -> dict[str, Any]:
        return dict(await self._request(Code.GET, "/metadata"))
