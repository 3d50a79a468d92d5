"""/topics (GET list, POST create) and /topics/{name} (GET describe, DELETE). CBOR or JSON both ways.

On a clustered broker creation and deletion are forwarded to the zookeeper (the broker's `topic_admin`), which owns
the list of topics; every replica then creates or deletes its local data from the snapshot that follows."""

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
        body = decode_body(request, allow_json=True)
        create = CreateTopicRequest.parse(body)
        if self.broker.topic_admin is not None:
            assert isinstance(body, dict)  # parse() checked
            answer = await self.broker.topic_admin.create_topic(body)
            return encode_body(request, answer, allow_json=True, code=Code.CREATED)
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
        if self.broker.topic_admin is not None:
            await self.broker.topic_admin.delete_topic(self._name(request))
            return Message(code=Code.DELETED)
        await self.broker.delete_topic(self._name(request))
        return Message(code=Code.DELETED)

    def get_resources_as_linkheader(self) -> Any:
        # One link per topic is listed under /ps/data instead; /topics/{name} stays out of .well-known/core.
        return LinkFormat([])
