"""Thin CoAP resources over the broker model: decode the request, call `pi_broker.broker.Broker`, encode the answer.

`build_site` assembles them into the one Site a broker process serves.
"""

from __future__ import annotations

from aiocoap import resource

from pi_broker.broker import Broker
from pi_broker.group.coordinator import GroupCoordinator
from pi_broker.replica_fetch import ReplicaFetchServer
from pi_broker.resources.base import BrokerSite, RequestLimits
from pi_broker.resources.cluster import ClusterMetadataResource, EpochEndResource, SnapshotSink
from pi_broker.resources.fetch import FetchResource
from pi_broker.resources.groups import GroupResource, GroupsResource
from pi_broker.resources.metadata import MetadataResource
from pi_broker.resources.produce import ProduceResource
from pi_broker.resources.pubsub import PubSubRootResource, TopicDataResource
from pi_broker.resources.subscribe import ClientTopicsResource, TopicTreeResource
from pikafka import protocol


def build_site(
    broker: Broker,
    replica_server: ReplicaFetchServer | None = None,
    snapshots: SnapshotSink | None = None,
    groups: GroupCoordinator | None = None,
) -> BrokerSite:
    """The broker's resources; `snapshots` (a clustered broker's ClusterLink) adds /cluster/metadata."""
    groups = groups or GroupCoordinator(broker)
    limits = RequestLimits(max_request_bytes=broker.config.max_request_bytes)
    replica_server = replica_server or ReplicaFetchServer(broker)
    site = BrokerSite(limits)
    site.add_resource((".well-known", "core"), resource.WKCResource(site.get_resources_as_linkheader, impl_info=None))
    site.add_resource(protocol.TOPICS, ClientTopicsResource(broker, limits))
    site.add_resource(protocol.TOPICS, TopicTreeResource(broker, limits))  # with /topics/{t}/{p}/records
    site.add_resource(protocol.PRODUCE, ProduceResource(broker, limits))
    site.add_resource(protocol.FETCH, FetchResource(broker, limits, replica_server))
    site.add_resource(("replica", "epoch-end"), EpochEndResource(broker, limits, replica_server))
    if snapshots is not None:
        site.add_resource(("cluster", "metadata"), ClusterMetadataResource(broker, limits, snapshots))
    site.add_resource(protocol.METADATA, MetadataResource(broker, limits))
    site.add_resource(protocol.PUBSUB_ROOT, PubSubRootResource(broker, limits))
    site.add_resource(protocol.PUBSUB_DATA, TopicDataResource(broker, limits))
    site.add_resource(protocol.GROUPS, GroupsResource(broker, limits, groups))
    site.add_resource(protocol.GROUPS, GroupResource(broker, limits, groups))
    return site
