"""One table of every error pikafka speaks, with its CoAP response code and whether a client should retry.

A service raises `PikafkaError(ErrorCode.X, "one-line reason")`; the CoAP layer renders it as the code's response with
the payload ``"X: reason"`` (text/plain), so stock CoAP tools show a readable line and our clients recover the code by
the name before the colon.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class ErrorSpec:
    coap_code: int  # the CoAP code as its 8-bit value: class << 5 | detail (4.04 -> 0x84)
    retriable: bool
    description: str


def _c(cls: int, detail: int) -> int:
    return (cls << 5) | detail


class ErrorCode(Enum):
    INVALID_REQUEST = ErrorSpec(_c(4, 0), False, "the request could not be decoded or is missing fields")
    CORRUPT_MESSAGE = ErrorSpec(_c(4, 0), False, "a record batch failed its CRC or framing check")
    INVALID_TOPIC = ErrorSpec(_c(4, 0), False, "the topic name is not allowed")
    INVALID_PARTITIONS = ErrorSpec(_c(4, 0), False, "the partition count is out of range")
    INVALID_REPLICATION_FACTOR = ErrorSpec(_c(4, 0), False, "the replication factor is out of range")
    INVALID_CONFIG = ErrorSpec(_c(4, 0), False, "a topic setting is out of range")
    OFFSET_OUT_OF_RANGE = ErrorSpec(_c(4, 0), False, "the offset is outside the partition's log")
    INVALID_ACKS = ErrorSpec(_c(4, 0), False, "acks must be 0, 1 or -1 (all)")
    NOT_LEADER_OR_FOLLOWER = ErrorSpec(_c(4, 12), True, "this broker does not lead the partition")
    FENCED_LEADER_EPOCH = ErrorSpec(_c(4, 12), True, "the request carries an old leader epoch")
    UNKNOWN_TOPIC_OR_PARTITION = ErrorSpec(_c(4, 4), False, "no such topic or partition")
    NOT_FOUND = ErrorSpec(_c(4, 4), False, "no such resource")
    METHOD_NOT_ALLOWED = ErrorSpec(_c(4, 5), False, "the resource does not accept this method")
    NOT_ACCEPTABLE = ErrorSpec(_c(4, 6), False, "no representation in the requested content format")
    UNKNOWN_BROKER = ErrorSpec(_c(4, 4), True, "the zookeeper has no live session for this broker; register again")
    TOPIC_ALREADY_EXISTS = ErrorSpec(_c(4, 9), False, "a topic of that name exists")
    CLUSTER_ID_MISMATCH = ErrorSpec(_c(4, 9), False, "the broker's data belongs to another cluster")
    BROKER_ID_IN_USE = ErrorSpec(_c(4, 9), False, "another live broker holds this broker id")
    OUT_OF_ORDER_SEQUENCE = ErrorSpec(_c(4, 9), False, "the producer sequence skips ahead of what was written")
    INVALID_PRODUCER_EPOCH = ErrorSpec(_c(4, 9), False, "the producer epoch is older than one already seen")
    RECORD_TOO_LARGE = ErrorSpec(_c(4, 13), False, "the payload is larger than the broker accepts")
    UNSUPPORTED_CONTENT_FORMAT = ErrorSpec(_c(4, 15), False, "the body's content format is not accepted here")
    STORAGE_ERROR = ErrorSpec(_c(5, 0), True, "the broker could not read or write its log")
    UNKNOWN_SERVER_ERROR = ErrorSpec(_c(5, 0), False, "an unexpected error inside the service")
    NOT_ENOUGH_REPLICAS = ErrorSpec(_c(5, 3), True, "fewer in-sync replicas than min_insync_replicas")
    # Kafka's distinction: the records were appended before the ISR shrank, so they may still be read (never as
    # acknowledged); NOT_ENOUGH_REPLICAS itself always means nothing was appended.
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = ErrorSpec(
        _c(5, 3), True, "written, but the ISR shrank below min_insync_replicas before the records were replicated"
    )
    BROKER_NOT_AVAILABLE = ErrorSpec(_c(5, 3), True, "the broker is starting or stopping")
    REQUEST_TIMED_OUT = ErrorSpec(_c(5, 4), True, "the request did not complete within its timeout")
    # Consumer groups (docs/groups.md): the retriable ones tell a member to find the coordinator again or rejoin.
    INVALID_GROUP_ID = ErrorSpec(_c(4, 0), False, "the group id is not allowed")
    GROUP_ID_NOT_FOUND = ErrorSpec(_c(4, 4), False, "the group has no members and no committed offsets")
    NOT_COORDINATOR = ErrorSpec(_c(4, 12), True, "this broker does not coordinate the group; find the coordinator")
    COORDINATOR_NOT_AVAILABLE = ErrorSpec(_c(5, 3), True, "the group's coordinator is not elected or loaded yet")
    UNKNOWN_MEMBER_ID = ErrorSpec(_c(4, 9), True, "the coordinator does not know this member; join again")
    ILLEGAL_GENERATION = ErrorSpec(_c(4, 9), True, "the member's generation is not the group's; join again")
    REBALANCE_IN_PROGRESS = ErrorSpec(_c(4, 9), True, "the group is rebalancing; join again")
    NON_EMPTY_GROUP = ErrorSpec(_c(4, 9), False, "the group has live members")

    @property
    def coap_code(self) -> int:
        return self.value.coap_code

    @property
    def retriable(self) -> bool:
        return self.value.retriable


class PikafkaError(Exception):
    """An error with a code from the table and a one-line reason."""

    def __init__(self, code: ErrorCode, reason: str = "") -> None:
        self.code = code
        # Keep diagnostics on one line whatever the reason text contains.
        self.reason = " ".join((reason or code.value.description).split())
        super().__init__(f"{code.name}: {self.reason}")

    @property
    def retriable(self) -> bool:
        return self.code.retriable

    def payload(self) -> bytes:
        return str(self).encode()

    @classmethod
    def from_payload(cls, coap_code: int, payload: bytes) -> PikafkaError:
        """Rebuild the error a service sent; unknown names map by CoAP class (5.xx retriable, 4.xx not)."""
        text = payload.decode("utf-8", "replace").strip()
        name, sep, reason = text.partition(":")
        if sep and name in ErrorCode.__members__:
            return cls(ErrorCode[name], reason.strip())
        fallback = ErrorCode.UNKNOWN_SERVER_ERROR if coap_code >> 5 == 5 else ErrorCode.INVALID_REQUEST
        if coap_code == _c(5, 3):
            fallback = ErrorCode.BROKER_NOT_AVAILABLE
        elif coap_code == _c(4, 4):
            fallback = ErrorCode.NOT_FOUND
        return cls(fallback, f"{coap_code >> 5}.{coap_code & 31:02d} {text}")
