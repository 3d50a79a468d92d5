"""/topics (GET list, POST create) and /topics/{name} (GET describe, DELETE). CBOR or JSON both ways."""

from __future__ import annotations

from typing import Any

from aiocoap import Code, Message, resource
from aiocoap.util.linkformat import LinkFormat

from pi_broker.messages import CreateTopicRequest
from pi_broker.resources.base import BrokerResource, decode_body, encode_body
from pikafka.errors import ErrorCode, PikafkaError


class TopicsResource(BrokerResource):
    async def handle_get(self, request: Any) -> Any:
        return encode_body(request, {"topics": self.broker.list_topics()}, allow_json=True)

    async def handle_post(self, request: Any) -> Any:
        create = CreateTopicRequest.parse(decode_body(request, allow_json=True))
        spec = self.broker.create_topic(create)
        return encode_body(
            request, {"name": spec.name, "partitions": spec.partitions}, allow_json=True, code=Code.CREATED
        )


class TopicResource(BrokerResource, resource.PathCapable):  # type: ignore[misc]
    """/topics/{name}: sees the request with /topics stripped, so its Uri-Path is the topic name alone."""

    def _name(self, request: Any) -> str:
        path = request.opt.uri_path
        if len(path) != 1 or not path[0]:
            raise PikafkaError(ErrorCode.NOT_FOUND, "expected /topics/{name}")
        name: str = path[0]
        return name

    async def handle_get(self, request: Any) -> Any:
        return encode_body(request, self.broker.describe_topic(self._name(request)), allow_json=True)

    async def handle_delete(self, request: Any) -> Any:
        await self.broker.delete_topic(self._name(request))
        return Message(code=Code.DELETED)

    def get_resources_as_linkheader(self) -> Any:
        # One link per topic is listed under /ps/data instead; /topics/{name} stays out of .well-known/core.
        return LinkFormat([])
