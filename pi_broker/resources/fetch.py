"""/fetch: FETCH (RFC 8132) or POST a CBOR map of positions.

A consumer's fetch (no `replica_id`) answers with whole batches below the high watermark, long-polling up to wait_ms
when there is nothing yet. A follower's fetch (`replica_id` set) goes to ReplicaFetchServer: records up to the log
end, errors per partition, the log end and start in every entry.
"""

from __future__ import annotations

from typing import Any

from pi_broker.broker import Broker
from pi_broker.messages import FetchRequest
from pi_broker.replica_fetch import ReplicaFetchServer
from pi_broker.resources.base import BrokerResource, RequestLimits, decode_body, encode_body


class FetchResource(BrokerResource):
    def __init__(self, broker: Broker, limits: RequestLimits, replica_server: ReplicaFetchServer) -> None:
        super().__init__(broker, limits)
        self.replica_server = replica_server

    async def handle_fetch(self, request: Any) -> Any:
        fetch = FetchRequest.parse(decode_body(request))
        if fetch.replica_id is not None:
            replicated = await self.replica_server.fetch(fetch)
            return encode_body(request, {"partitions": [r.to_wire() for r in replicated]})
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
