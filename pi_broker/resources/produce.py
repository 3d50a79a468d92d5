"""/produce: POST a CBOR map of record batches; answers with their offsets once durable (acks 1/-1)."""

from __future__ import annotations

from typing import Any

from aiocoap import Code

from pi_broker.messages import ProduceRequest
from pi_broker.resources.base import BrokerResource, decode_body, encode_body


class ProduceResource(BrokerResource):
    async def handle_post(self, request: Any) -> Any:
        produce = ProduceRequest.parse(decode_body(request))
        results = await self.broker.produce(produce)
        document = {
            "results": [
                {"topic": r.topic, "partition": r.partition, "base_offset": r.base_offset, "last_offset": r.last_offset}
                for r in results
            ]
        }
        return encode_body(request, document, code=Code.CHANGED)
