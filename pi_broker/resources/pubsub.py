"""The IETF CoAP pub-sub style for the simplest sensors and for stock tools.

/ps            GET: link-format list of the topic-data resources
/ps/data/{t}   PUT or POST: append one reading (any content format); GET: the latest reading;
               GET with Observe: the latest reading, then one notification per new durable record, in append order.

Notifications are sent straight into the request's pipe from a per-observation TopicWatch rather than through
aiocoap's ServerObservation.trigger(): trigger() keeps only the newest pending response (observe is lossy by
design), and a group-commit round that makes several records durable at once would then lose all but the last.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any
from urllib.parse import urlsplit

from aiocoap import Code, Message, resource
from aiocoap import error as aiocoap_error
from aiocoap.util.linkformat import Link, LinkFormat

from pi_broker.broker import Reading
from pi_broker.resources.base import BrokerResource, error_message, text_message
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import CT_LINK_FORMAT

log = logging.getLogger(__name__)

_OBSERVE_MODULUS = 1 << 24  # the Observe option holds 3 bytes


def _links(names: list[str], prefix: str) -> Any:
    return LinkFormat([Link(f"{prefix}{name}", rt="core.ps.data", obs=None) for name in names])


class PubSubRootResource(BrokerResource):
    async def handle_get(self, request: Any) -> Any:
        links = _links(self.broker.list_topics(), "/ps/data/")
        return Message(code=Code.CONTENT, payload=str(links).encode(), content_format=CT_LINK_FORMAT)


class TopicDataResource(BrokerResource, resource.PathCapable):  # type: ignore[misc]
    """/ps/data/{topic}: sees the request with /ps/data stripped, so its Uri-Path is the topic name alone."""

    def _topic(self, request: Any) -> str:
        path = request.opt.uri_path
        if len(path) != 1 or not path[0]:
            raise PikafkaError(ErrorCode.NOT_FOUND, "expected /ps/data/{topic}")
        name: str = path[0]
        return name

    async def handle_put(self, request: Any) -> Any:
        topic = self._topic(request)
        key = _reading_key(request)
        cf = request.opt.content_format
        reading = await self.broker.append_reading(topic, request.payload, key, None if cf is None else int(cf))
        return text_message(Code.CHANGED, f"partition={reading.partition} offset={reading.offset}")

    async def handle_post(self, request: Any) -> Any:
        return await self.handle_put(request)

    async def handle_get(self, request: Any) -> Any:
        return self._latest(request)

    def _latest(self, request: Any) -> Any:
        topic = self._topic(request)
        latest = self.broker.latest_reading(topic)
        if latest is None:
            raise PikafkaError(ErrorCode.NOT_FOUND, f"topic {topic!r} has no record yet")
        return _reading_message(latest)

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        block2 = request.opt.block2
        if request.code == Code.GET and block2 is not None and block2.block_number > 0:
            # A later block of an oversize reading, most often of a notification cut by _first_block: aiocoap's
            # Block2 cache never saw block 0 of those, so cut the block here (the ETag tells a stale combination).
            try:
                latest = self._latest(request)
                pipe.add_response(
                    latest._extract_block(
                        block2.block_number, block2.size_exponent, request.remote.maximum_payload_size
                    ),
                    is_last=True,
                )
            except PikafkaError as exc:
                pipe.add_response(error_message(exc), is_last=True)
            except aiocoap_error.RenderableError as exc:
                pipe.add_response(exc.to_message(), is_last=True)
        elif request.code == Code.GET and request.opt.observe == 0:
            await self._observe(pipe)
        else:
            await super().render_to_pipe(pipe)

    async def _observe(self, pipe: Any) -> None:
        request = pipe.request
        try:
            topic = self._topic(request)
            # Same step, no await: the watch starts exactly after the record sent as the first response.
            watch = self.broker.watch(topic)
            latest = self.broker.latest_reading(topic)
        except PikafkaError as exc:
            pipe.add_response(error_message(exc), is_last=True)
            return
        # An empty topic can be observed too: the first response is then 2.05 with an empty payload.
        first = _reading_message(latest) if latest is not None else Message(code=Code.CONTENT)
        first = _first_block(first, request.remote)
        first.opt.observe = 0
        pipe.add_response(first, is_last=False)
        sequence = 0
        try:
            async for reading in watch:
                sequence = (sequence + 1) % _OBSERVE_MODULUS
                notification = _first_block(_reading_message(reading), request.remote)
                notification.opt.observe = sequence
                pipe.add_response(notification, is_last=False)
        except PikafkaError as exc:
            pipe.add_response(error_message(exc), is_last=True)
        except Exception:
            log.exception("observation of %s failed", topic)
            internal = PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, "unexpected error in the broker, see its log")
            pipe.add_response(error_message(internal), is_last=True)

    def get_resources_as_linkheader(self) -> Any:
        # The Site prefixes these with /ps/data.
        return _links(self.broker.list_topics(), "/")


def _reading_message(reading: Reading) -> Any:
    message = Message(code=Code.CONTENT, payload=reading.value)
    if reading.content_format is not None:
        message.opt.content_format = reading.content_format
    # The ETag lets a block-wise reader notice that the latest reading changed between its blocks.
    message.opt.etag = zlib.crc32(reading.value).to_bytes(4, "big")
    return message


def _first_block(message: Any, remote: Any) -> Any:
    """Notifications bypass aiocoap's Block2 cache, so cut an oversize one to its first block ourselves (RFC 7959
    section 2.6: the observer fetches the rest with GET, matched by the ETag)."""
    limit = remote.maximum_payload_size
    if len(message.payload) <= limit:
        return message
    return message._extract_block(0, min(6, remote.maximum_block_size_exp), limit)


def _reading_key(request: Any) -> bytes:
    """The `k` query parameter, else the sender's host (without port: a sensor's source port changes per run)."""
    for query in request.opt.uri_query:
        name, _, value = str(query).partition("=")
        if name == "k":
            return value.encode()
    hostinfo = str(request.remote.hostinfo)
    host = urlsplit(f"//{hostinfo}").hostname
    return (host or hostinfo).encode()
