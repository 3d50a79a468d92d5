"""Push subscriptions: GET /topics/{t}/{p}/records?offset=N (+Observe), and the /topics resources as clients see
them (internal `__` topics can be neither created nor listed by default).

A GET answers once, like a fetch of one partition: records from the batch holding `offset` up to the high watermark.
With Observe the first answer is that, and every later notification carries the records that became committed since
the previous one (never anything at or above the high watermark). Each answer says where it starts (`offset`: the
position it was read from) and where the next one will (`next_offset`), so a subscriber that missed a notification
(aiocoap keeps only the newest unread one; UDP may drop one) sees `offset` beyond its own position and fetches the
gap. The observation ends with NOT_LEADER_OR_FOLLOWER when this broker stops leading the partition, and with
UNKNOWN_TOPIC_OR_PARTITION when the topic is deleted: the subscriber re-resolves the leader and subscribes again from
its position.
"""

from __future__ import annotations

import logging
from typing import Any

import cbor2
from aiocoap import Code, Message

from pi_broker.broker import Broker
from pi_broker.partition import Partition, Role, TopicPartition
from pi_broker.resources.admin import TopicResource, TopicsResource
from pi_broker.resources.base import BrokerResource, RequestLimits, decode_body, encode_body, error_message
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import CT_CBOR, DEFAULT_FETCH_MAX_BYTES, INTERNAL_PREFIX, RECORDS
from pikafka.records import parse_header

log = logging.getLogger(__name__)

_OBSERVE_MODULUS = 1 << 24
_UDP_HEADROOM = 160  # CBOR field names and numbers around the records, so one notification fits one datagram


class ClientTopicsResource(TopicsResource):
    """/topics: internal topics are created by brokers only and listed only on request (`?internal=1`)."""

    async def handle_get(self, request: Any) -> Any:
        names = self.broker.list_topics()
        if "internal=1" not in [str(q) for q in request.opt.uri_query]:
            names = [name for name in names if not name.startswith(INTERNAL_PREFIX)]
        return encode_body(request, {"topics": names}, allow_json=True)

    async def handle_post(self, request: Any) -> Any:
        body = decode_body(request, allow_json=True)
        name = body.get("name") if isinstance(body, dict) else None
        if isinstance(name, str) and name.startswith(INTERNAL_PREFIX):
            raise PikafkaError(ErrorCode.INVALID_TOPIC, f"topic names starting with {INTERNAL_PREFIX!r} are internal")
        return await super().handle_post(request)


class TopicTreeResource(TopicResource):
    """/topics/{name} as before, plus /topics/{name}/{partition}/records."""

    def __init__(self, broker: Broker, limits: RequestLimits) -> None:
        super().__init__(broker, limits)
        self.records = PartitionRecordsResource(broker, limits)

    async def render_to_pipe(self, pipe: Any) -> None:
        path = pipe.request.opt.uri_path
        if len(path) == 3 and path[2] == RECORDS:
            await self.records.render_to_pipe(pipe)
        else:
            await super().render_to_pipe(pipe)


class PartitionRecordsResource(BrokerResource):
    """Sees the request with /topics stripped: its Uri-Path is (topic, partition, "records")."""

    def _partition(self, request: Any) -> Partition:
        topic, raw_partition, _ = request.opt.uri_path
        if not raw_partition.isdigit() or len(raw_partition) > 6:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {raw_partition[:20]!r} is no number")
        partition = self.broker.find_partition(TopicPartition(topic, int(raw_partition)))
        if partition is None:
            raise PikafkaError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no partition {raw_partition} of topic {topic[:60]!r} here"
            )
        return partition

    def _query(self, request: Any, partition: Partition) -> tuple[int, int]:
        offset: int | None = None
        max_bytes = DEFAULT_FETCH_MAX_BYTES
        for query in request.opt.uri_query:
            name, _, value = str(query).partition("=")
            if name not in ("offset", "max_bytes"):
                raise PikafkaError(ErrorCode.INVALID_REQUEST, f"unknown query parameter {name[:40]!r}")
            if not value.isdigit() or len(value) > 19:
                raise PikafkaError(ErrorCode.INVALID_REQUEST, f"{name} must be a whole number >= 0, got {value[:40]!r}")
            if name == "offset":
                offset = int(value)
            else:
                max_bytes = max(1, min(int(value), self.limits.max_request_bytes))
        if offset is None:
            offset = partition.high_watermark  # no offset: records from now on
        start, end = partition.log.log_start_offset, partition.log.log_end_offset
        if not start <= offset <= end:
            raise PikafkaError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"offset {offset} is outside [{start}, {end}] of partition {partition.key}",
            )
        limit = request.remote.maximum_payload_size
        if limit < 64 * 1024:
            max_bytes = min(max_bytes, max(64, limit - _UDP_HEADROOM))  # UDP: keep a notification in one datagram
        return offset, max_bytes

    async def handle_get(self, request: Any) -> Any:
        partition = self._partition(request)
        partition.require_leader()
        offset, max_bytes = self._query(request, partition)
        document, _ = _read(partition, offset, max_bytes)
        return Message(code=Code.CONTENT, payload=cbor2.dumps(document), content_format=CT_CBOR)

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        if request.code == Code.GET and request.opt.observe == 0:
            await self._observe(pipe)
        else:
            await super().render_to_pipe(pipe)

    async def _observe(self, pipe: Any) -> None:
        request = pipe.request
        try:
            partition = self._partition(request)
            partition.require_leader()
            epoch = partition.leader_epoch
            position, max_bytes = self._query(request, partition)
        except PikafkaError as exc:
            pipe.add_response(error_message(exc), is_last=True)
            return
        sequence = 0
        try:
            while True:
                document, position = _read(partition, position, max_bytes)
                if sequence == 0 or document["records"]:
                    message = Message(code=Code.CONTENT, payload=cbor2.dumps(document), content_format=CT_CBOR)
                    message.opt.observe = sequence
                    sequence = (sequence + 1) % _OBSERVE_MODULUS
                    pipe.add_response(message, is_last=False)
                if position < partition.high_watermark:
                    continue
                # No await between the read above and taking this future: no advance slips between them.
                changed = partition.changed()
                await changed
                if partition.closed:
                    raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {partition.key} was deleted")
                if partition.role is not Role.LEADER or partition.leader_epoch != epoch:
                    raise PikafkaError(
                        ErrorCode.NOT_LEADER_OR_FOLLOWER,
                        f"broker {partition.broker_id} stopped leading {partition.key}; subscribe at the new leader",
                    )
        except PikafkaError as exc:
            pipe.add_response(error_message(exc), is_last=True)
        except Exception:
            log.exception("subscription to %s failed", partition.key)
            internal = PikafkaError(ErrorCode.UNKNOWN_SERVER_ERROR, "unexpected error in the broker, see its log")
            pipe.add_response(error_message(internal), is_last=True)


def _read(partition: Partition, offset: int, max_bytes: int) -> tuple[dict[str, Any], int]:
    """Committed records from `offset` (whole batches) and the position after them."""
    start = partition.log.log_start_offset
    if offset < start:
        offset = start  # retention removed them; the subscriber sees the jump in `offset`
    hw = partition.high_watermark
    data = b""
    next_offset = offset
    if offset < hw:
        data = partition.log.read(offset, max_bytes, max_offset=hw)
        next_offset = _end_of(data, offset)
    document = {
        "topic": partition.key.topic,
        "partition": partition.key.partition,
        "offset": offset,
        "next_offset": next_offset,
        "high_watermark": hw,
        "log_start_offset": start,
        "records": bytes(data),
    }
    return document, next_offset


def _end_of(data: bytes, offset: int) -> int:
    pos, end = 0, offset
    while pos < len(data):
        header = parse_header(data, pos)
        end = max(end, header.next_offset)
        pos += header.size
    return end
