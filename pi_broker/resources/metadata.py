"""/metadata: GET who leads each partition; `?topic=NAME` (repeatable) narrows it. CBOR, or JSON on Accept 50."""

from __future__ import annotations

from typing import Any

from pi_broker.resources.base import BrokerResource, encode_body


class MetadataResource(BrokerResource):
    async def handle_get(self, request: Any) -> Any:
        topics = [q.split("=", 1)[1] for q in request.opt.uri_query if q.startswith("topic=")]
        return encode_body(request, self.broker.metadata(topics or None), allow_json=True)
