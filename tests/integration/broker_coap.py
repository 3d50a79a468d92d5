"""A raw aiocoap client for the broker integration tests: requests by path, CBOR in and out, error lines parsed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from aiocoap import Code, Context, Message

from pikafka.errors import ErrorCode
from pikafka.protocol import CT_CBOR, CT_JSON
from pikafka.records import Record, decode_records, encode_batch, iter_batches


@dataclass
class Reply:
    code: Any
    payload: bytes
    content_format: int | None

    @property
    def body(self) -> Any:
        if self.content_format == CT_JSON:
            return json.loads(self.payload)
        return cbor2.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode()

    def assert_error(self, code: str, name: ErrorCode) -> None:
        """A 4.xx/5.xx whose payload is one text line naming the error."""
        assert str(self.code).startswith(code), f"expected {code}, got {self.code}: {self.payload!r}"
        assert self.content_format == 0, self.content_format
        line = self.text
        assert "\n" not in line and line.startswith(f"{name.name}: "), line
        assert len(line) > len(name.name) + 2


class BrokerClient:
    def __init__(self, context: Any, port: int) -> None:
        self.context = context
        self.port = port

    async def reconnect(self) -> None:
        """A fresh client context: after a broker restart the old TCP connection is dead."""
        await self.context.shutdown()
        self.context = await Context.create_client_context()

    async def close(self) -> None:
        await self.context.shutdown()

    def uri(self, path: str, tcp: bool) -> str:
        scheme = "coap+tcp" if tcp else "coap"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def request(
        self,
        method: Any,
        path: str,
        payload: bytes = b"",
        *,
        content_format: int | None = None,
        accept: int | None = None,
        tcp: bool = True,
        no_response: int | None = None,
    ) -> Reply:
        message = Message(code=method, uri=self.uri(path, tcp), payload=payload)
        if content_format is not None:
            message.opt.content_format = content_format
        if accept is not None:
            message.opt.accept = accept
        if no_response is not None:
            message.opt.no_response = no_response
        response = await self.context.request(message).response
        cf = response.opt.content_format
        return Reply(response.code, response.payload, None if cf is None else int(cf))

    async def cbor(self, method: Any, path: str, body: Any, *, tcp: bool = True) -> Reply:
        return await self.request(method, path, cbor2.dumps(body), content_format=CT_CBOR, tcp=tcp)

    async def create_topic(self, name: str, partitions: int = 1, **config: int) -> None:
        reply = await self.cbor(Code.POST, "/topics", {"name": name, "partitions": partitions, "config": config})
        assert reply.code == Code.CREATED, reply

    async def produce(self, topic: str, batches: Sequence[bytes], partition: int = 0, acks: int = 1) -> Reply:
        body = {"acks": acks, "batches": [{"topic": topic, "partition": partition, "records": b} for b in batches]}
        return await self.cbor(Code.POST, "/produce", body)

    async def produce_values(self, topic: str, values: Sequence[bytes], partition: int = 0) -> tuple[int, int]:
        reply = await self.produce(topic, [encode_batch([Record(value=v) for v in values])], partition)
        assert reply.code == Code.CHANGED, reply
        result = reply.body["results"][0]
        return result["base_offset"], result["last_offset"]

    async def fetch(self, topic: str, offset: int = 0, partition: int = 0, **extra: int) -> Reply:
        body = {"partitions": [{"topic": topic, "partition": partition, "offset": offset}], **extra}
        return await self.cbor(Code.FETCH, "/fetch", body)

    async def read_values(self, topic: str, partition: int = 0, offset: int = 0) -> list[bytes | None]:
        """Every record value from `offset` to the high watermark, fetching as often as needed."""
        values: list[bytes | None] = []
        position = offset
        while True:
            reply = await self.fetch(topic, position, partition)
            assert reply.code == Code.CONTENT, reply
            entry = reply.body["partitions"][0]
            got = False
            for _, batch in iter_batches(entry["records"]):
                for record in decode_records(batch):
                    if record.offset >= position:
                        values.append(record.value)
                        position = record.offset + 1
                        got = True
            if not got or position >= entry["high_watermark"]:
                return values


async def connect(port: int) -> BrokerClient:
    return BrokerClient(await Context.create_client_context(), port)


SEED_TOPIC = "seeded"
SEED_VALUES = [b"first", b"second", b"third"]


async def assert_alive_with_seed(client: BrokerClient) -> None:
    """The broker still answers and the records acknowledged before the bad request are all still readable."""
    assert await client.read_values(SEED_TOPIC) == SEED_VALUES
    reply = await client.request(Code.GET, "/topics")
    assert reply.code == Code.CONTENT
