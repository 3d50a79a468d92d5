"""Every new resource answers bad input with a one-line 4.xx reason, and the broker carries on."""

from __future__ import annotations

import cbor2
import pytest
from aiocoap import Code

from pikafka.errors import ErrorCode
from tests.integration.broker_coap import BrokerClient


async def _create_topic(client: BrokerClient, name: str, partitions: int = 2) -> None:
    reply = await client.request(Code.POST, "/topics", cbor2.dumps({"name": name, "partitions": partitions}))
    assert reply.code == Code.CREATED, reply


async def _member(client: BrokerClient, group: str) -> dict:
    await client.request(Code.POST, f"/groups/{group}/find-coordinator")
    body = {"topics": ["t"], "session_timeout_ms": 30000}
    reply = await client.request(Code.POST, f"/groups/{group}/join", cbor2.dumps(body))
    assert reply.code == Code.CHANGED, reply.payload
    return dict(reply.body)


BAD_REQUESTS = [
    # (method, path, body, code, error)
    (Code.POST, "/groups/bad%20id/find-coordinator", {}, "4.00", ErrorCode.INVALID_GROUP_ID),
    (Code.POST, "/groups/g/nonsense", {}, "4.04", ErrorCode.NOT_FOUND),
    (Code.POST, "/groups/g/join/extra", {}, "4.04", ErrorCode.NOT_FOUND),
    (Code.PUT, "/groups/g/join", {}, "4.05", ErrorCode.METHOD_NOT_ALLOWED),
    (Code.GET, "/groups/g/join", None, "4.05", ErrorCode.METHOD_NOT_ALLOWED),
    (Code.POST, "/groups/g/offsets", {}, "4.05", ErrorCode.METHOD_NOT_ALLOWED),
    (Code.POST, "/groups/g", {}, "4.05", ErrorCode.METHOD_NOT_ALLOWED),
    (Code.DELETE, "/groups", None, "4.05", ErrorCode.METHOD_NOT_ALLOWED),
    (Code.POST, "/groups/g/join", [1, 2], "4.00", ErrorCode.INVALID_REQUEST),
    (Code.POST, "/groups/g/join", {"topics": []}, "4.00", ErrorCode.INVALID_REQUEST),
    (Code.POST, "/groups/g/join", {"topics": [1]}, "4.00", ErrorCode.INVALID_REQUEST),
    (Code.POST, "/groups/g/join", {"topics": ["t"], "strategies": ["sticky"]}, "4.00", ErrorCode.INVALID_REQUEST),
    (Code.POST, "/groups/g/join", {"topics": ["t"], "session_timeout_ms": 5}, "4.00", ErrorCode.INVALID_REQUEST),
    (Code.POST, "/groups/g/join", {"topics": ["t"], "member_id": 7}, "4.00", ErrorCode.INVALID_REQUEST),
    (Code.POST, "/groups/g/join", {"topics": ["nope"]}, "4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
    (Code.POST, "/groups/g/heartbeat", {"member_id": "x"}, "4.00", ErrorCode.INVALID_REQUEST),
    (Code.POST, "/groups/g/heartbeat", {"member_id": "x", "generation": 1}, "4.09", ErrorCode.UNKNOWN_MEMBER_ID),
    (Code.POST, "/groups/g/leave", {"member_id": "x"}, "4.09", ErrorCode.UNKNOWN_MEMBER_ID),
    (Code.POST, "/groups/g/leave", {}, "4.00", ErrorCode.INVALID_REQUEST),
    (Code.POST, "/groups/g/commit", {"member_id": "x", "generation": 1}, "4.00", ErrorCode.INVALID_REQUEST),
    (
        Code.POST,
        "/groups/g/commit",
        {"member_id": "x", "generation": 1, "offsets": [{"topic": "t", "partition": 0, "offset": -1}]},
        "4.00",
        ErrorCode.INVALID_REQUEST,
    ),
    (
        Code.POST,
        "/groups/g/commit",
        {"member_id": "x", "generation": 1, "offsets": [{"topic": "t", "partition": 0, "offset": 1}]},
        "4.09",
        ErrorCode.UNKNOWN_MEMBER_ID,
    ),
    (Code.POST, "/groups/g/reset", {"offsets": []}, "4.00", ErrorCode.INVALID_REQUEST),
    (
        Code.POST,
        "/groups/g/reset",
        {"offsets": [{"topic": "nope", "partition": 0, "offset": 1}]},
        "4.04",
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    ),
    (Code.GET, "/groups/never-used", None, "4.04", ErrorCode.GROUP_ID_NOT_FOUND),
    (Code.POST, "/topics", {"name": "__mine"}, "4.00", ErrorCode.INVALID_TOPIC),
    (Code.GET, "/topics/t/x/records", None, "4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
    (Code.GET, "/topics/t/9/records", None, "4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
    (Code.GET, "/topics/nope/0/records", None, "4.04", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
    (Code.GET, "/topics/t/0/records?offset=-3", None, "4.00", ErrorCode.INVALID_REQUEST),
    (Code.GET, "/topics/t/0/records?offset=99", None, "4.00", ErrorCode.OFFSET_OUT_OF_RANGE),
    (Code.GET, "/topics/t/0/records?colour=red", None, "4.00", ErrorCode.INVALID_REQUEST),
    (Code.POST, "/topics/t/0/records", None, "4.05", ErrorCode.METHOD_NOT_ALLOWED),
    (Code.GET, "/topics/t/0/other", None, "4.04", ErrorCode.NOT_FOUND),
]


@pytest.mark.parametrize(("method", "path", "body", "code", "error"), BAD_REQUESTS, ids=lambda v: str(v)[:40])
async def test_bad_group_and_subscription_requests_get_one_line_reasons(client, method, path, body, code, error):
    await _create_topic(client, "t")
    await client.request(Code.POST, "/groups/g/find-coordinator")  # creates __consumer_offsets
    payload = b"" if body is None else cbor2.dumps(body)
    reply = await client.request(method, path.replace("%20", " "), payload)
    reply.assert_error(code, error)
    # The broker is still fine.
    assert (await client.request(Code.GET, "/groups")).code == Code.CONTENT


async def test_undecodable_and_wrongly_formatted_bodies(client):
    await _create_topic(client, "t")
    reply = await client.request(Code.POST, "/groups/g/join", b"\xff\x00")
    reply.assert_error("4.00", ErrorCode.INVALID_REQUEST)
    reply = await client.request(Code.POST, "/groups/g/join", b"x", content_format=42)
    reply.assert_error("4.15", ErrorCode.UNSUPPORTED_CONTENT_FORMAT)


async def test_commit_fencing_over_the_wire(client):
    await _create_topic(client, "t")
    member = await _member(client, "fenced")
    offsets = [{"topic": "t", "partition": 0, "offset": 0}]
    stale = {"member_id": member["member_id"], "generation": member["generation"] - 1, "offsets": offsets}
    reply = await client.request(Code.POST, "/groups/fenced/commit", cbor2.dumps(stale))
    reply.assert_error("4.09", ErrorCode.ILLEGAL_GENERATION)
    good = {**stale, "generation": member["generation"]}
    assert (await client.request(Code.POST, "/groups/fenced/commit", cbor2.dumps(good))).code == Code.CHANGED
    reset = {"offsets": offsets}
    reply = await client.request(Code.POST, "/groups/fenced/reset", cbor2.dumps(reset))
    reply.assert_error("4.09", ErrorCode.NON_EMPTY_GROUP)
    leave = {"member_id": member["member_id"]}
    assert (await client.request(Code.POST, "/groups/fenced/leave", cbor2.dumps(leave))).code == Code.CHANGED
    assert (await client.request(Code.POST, "/groups/fenced/reset", cbor2.dumps(reset))).code == Code.CHANGED
    listed = (await client.request(Code.GET, "/topics")).body["topics"]
    assert "__consumer_offsets" not in listed
    assert "__consumer_offsets" in (await client.request(Code.GET, "/topics?internal=1")).body["topics"]
