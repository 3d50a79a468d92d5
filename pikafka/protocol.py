"""CoAP paths, content formats and the request/response field names shared by brokers and clients.

docs/protocol.md is the readable version of this module; keep the two in step.
"""

from __future__ import annotations

import re

from pikafka.errors import ErrorCode, PikafkaError

# CoAP content formats (IANA registry numbers).
CT_TEXT = 0
CT_LINK_FORMAT = 40
CT_OCTET_STREAM = 42
CT_JSON = 50
CT_CBOR = 60
CT_SENML_JSON = 110
CT_SENML_CBOR = 112

DEFAULT_PORT = 5683

# Resource paths, as tuples of Uri-Path segments.
TOPICS = ("topics",)  # GET list, POST create; /topics/{name}: GET describe, DELETE
PRODUCE = ("produce",)  # POST
FETCH = ("fetch",)  # FETCH (RFC 8132) or POST
METADATA = ("metadata",)  # GET
PUBSUB_DATA = ("ps", "data")  # /ps/data/{topic}: PUT/POST one reading, GET latest, GET+Observe
PUBSUB_ROOT = ("ps",)  # GET: link-format list of topic-data resources
GROUPS = ("groups",)  # GET list; /groups/{g}: GET describe; /groups/{g}/{operation}: see docs/groups.md
RECORDS = "records"  # /topics/{t}/{p}/records?offset=N: GET (+Observe) a partition's records (push subscription)

# Internal topics: names starting with "__" are created by the brokers only (clients get INVALID_TOPIC).
INTERNAL_PREFIX = "__"
OFFSETS_TOPIC = "__consumer_offsets"  # committed offsets of consumer groups, see docs/groups.md
OFFSETS_TOPIC_PARTITIONS = 10
INTERNAL_TOPICS = frozenset({OFFSETS_TOPIC})

# acks levels
ACKS_NONE = 0
ACKS_LEADER = 1
ACKS_ALL = -1

# Limits a broker enforces; clients use them to size batches.
MAX_TOPIC_NAME = 249
MAX_PARTITIONS = 1024
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_FETCH_MAX_BYTES = 1024 * 1024
MAX_WAIT_MS = 30_000

# Same alphabet as Kafka: safe as a file name and as a single Uri-Path segment.
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]+")


def check_topic_name(name: object, *, internal: bool = False) -> str:
    """Return the name if it may be a topic, else raise INVALID_TOPIC naming the rule it breaks; names starting
    with "__" only when `internal` (the brokers' own topics)."""
    if not isinstance(name, str):
        raise PikafkaError(ErrorCode.INVALID_TOPIC, "topic name must be a text string")
    if not name:
        raise PikafkaError(ErrorCode.INVALID_TOPIC, "topic name is empty")
    if len(name) > MAX_TOPIC_NAME:
        raise PikafkaError(ErrorCode.INVALID_TOPIC, f"topic name longer than {MAX_TOPIC_NAME} characters")
    if name in (".", ".."):
        raise PikafkaError(ErrorCode.INVALID_TOPIC, "topic name may not be '.' or '..'")
    if not _TOPIC_RE.fullmatch(name):
        raise PikafkaError(
            ErrorCode.INVALID_TOPIC,
            f"topic name {name[:40]!r} may hold only ASCII letters, digits, '.', '_' and '-'",
        )
    if name.startswith(INTERNAL_PREFIX) and not internal:
        raise PikafkaError(ErrorCode.INVALID_TOPIC, f"topic names starting with {INTERNAL_PREFIX!r} are internal")
    return name
