"""The client transport's own behaviour over real loopback sockets: what happens to a TCP connection that fails."""

from __future__ import annotations

import asyncio

import pytest
from aiocoap.numbers.codes import Code

from clients.transport import BrokerAddress, BrokerUnreachableError, CoapTransport


async def test_a_request_that_goes_unanswered_drops_its_connection_and_the_retry_opens_a_new_one():
    # A peer that accepts and reads but never answers: what a broker whose host lost power looks like from a
    # connection opened before (no reset ever comes). Each retry must not go down the same dead connection.
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:  # the client aborts the connection: a reset
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = CoapTransport()
    await transport.open()
    try:
        for _ in range(2):
            with pytest.raises(BrokerUnreachableError, match="no answer within"):
                await transport.request(BrokerAddress("127.0.0.1", port), Code.GET, "/metadata", timeout_s=0.3)
        assert len(accepted) == 2
        # The first connection was closed by the client, not left open beside the second.
        await asyncio.sleep(0.1)
        assert accepted[0].is_closing()
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()
