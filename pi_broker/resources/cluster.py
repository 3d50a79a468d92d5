"""Resources only a clustered broker needs.

/cluster/metadata  POST: the zookeeper pushes a metadata snapshot (CBOR); 2.04 once applied (or ignored as older).
/replica/epoch-end POST: a follower asks where an epoch ends in this leader's log, {topic, partition, epoch,
                   leader_epoch} -> {epoch, end_offset} (docs/replication.md).
"""

from __future__ import annotations

from typing import Any, Protocol

from aiocoap import Code, Message

from pi_broker.broker import Broker
from pi_broker.messages import EpochEndRequest
from pi_broker.replica_fetch import ReplicaFetchServer
from pi_broker.resources.base import BrokerResource, RequestLimits, decode_body, encode_body


class SnapshotSink(Protocol):
    async def receive_snapshot(self, raw: object) -> None: ...


class ClusterMetadataResource(BrokerResource):
    def __init__(self, broker: Broker, limits: RequestLimits, sink: SnapshotSink) -> None:
        super().__init__(broker, limits)
        self.sink = sink

    async def handle_post(self, request: Any) -> Any:
        await self.sink.receive_snapshot(decode_body(request))
        return Message(code=Code.CHANGED)


class EpochEndResource(BrokerResource):
    def __init__(self, broker: Broker, limits: RequestLimits, server: ReplicaFetchServer) -> None:
        super().__init__(broker, limits)
        self.server = server

    async def handle_post(self, request: Any) -> Any:
        answer = self.server.epoch_end(EpochEndRequest.parse(decode_body(request)))
        return encode_body(request, {"epoch": answer.epoch, "end_offset": answer.end_offset}, code=Code.CHANGED)
