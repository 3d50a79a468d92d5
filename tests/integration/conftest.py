"""The CoAP test client most integration tests talk to the `broker` fixture with (one aiocoap context each)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import BrokerProcess
from tests.integration.broker_coap import BrokerClient, connect


@pytest.fixture
async def client(broker: BrokerProcess) -> AsyncIterator[BrokerClient]:
    client = await connect(broker.port)
    try:
        yield client
    finally:
        await client.close()
