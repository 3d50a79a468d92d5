"""/fetch: FETCH (RFC 8132) or POST a CBOR map of positions; answers with whole batches below the high watermark,
long-polling up to wait_ms when there is nothing yet."""

from __future__ import annotations

from typing import Any

from pi_broker.messages import FetchRequest
from pi_broker.resources.base import BrokerResource, decode_body, encode_body


class FetchResource(BrokerResource):
    async def handle_fetch(self, request: Any) -> Any:
        fetch = FetchRequest.parse(decode_body(request))
        results = await self.broker.fetch(fetch)
        document = {
            "partitions": [
                {
                    "topic": r.topic,
                    "partition": r.partition,
                    "high_watermark": r.high_watermark,
                    "log_start_offset": r.log_start_offset,
                    "records": r.records,
                }
                for r in results
            ]
        }
        return encode_body(request, document)

    async def handle_post(self, request: Any) -> Any:
        return await self.handle_fetch(request)
