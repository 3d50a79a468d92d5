"""`pikafka cluster`: the operator's view of brokers and partitions, gathered from /metadata and each broker.

The placement (leader, epoch, replicas, ISR) comes from the cluster metadata, which the zookeeper and every broker
serve alike; log end and high watermark are what each partition's leader reports for its own replica, asked of the
leaders concurrently so one dead broker never stalls the view (it shows as unknown).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiocoap import Code

from clients.transport import BrokerAddress, CoapTransport, parse_bootstrap, request_first_reachable
from pikafka.errors import PikafkaError


@dataclass(frozen=True)
class BrokerRow:
    id: int
    address: str
    alive: bool
    partitions_led: int


@dataclass(frozen=True)
class PartitionRow:
    topic: str
    partition: int
    leader: int | None
    epoch: int
    replicas: list[int]
    isr: list[int]
    log_end: int | None
    high_watermark: int | None
    under_replicated: bool


@dataclass(frozen=True)
class ClusterView:
    cluster_id: str | None
    metadata_version: int | None
    brokers: list[BrokerRow]
    partitions: list[PartitionRow]


async def fetch_cluster_view(bootstrap: str | Sequence[str], *, timeout_s: float = 5.0) -> ClusterView:
    transport = CoapTransport()
    await transport.open()
    try:
        seeds = parse_bootstrap(bootstrap if isinstance(bootstrap, str) else list(bootstrap))
        meta = (await request_first_reachable(transport, seeds, Code.GET, "/metadata", timeout_s=timeout_s)).cbor()
        addresses = {int(b["id"]): BrokerAddress(str(b["host"]), int(b["port"])) for b in meta.get("brokers", [])}
        alive = {int(b["id"]): bool(b.get("alive", True)) for b in meta.get("brokers", [])}
        topics = meta.get("topics", [])
        leaders = {
            p["leader"]
            for t in topics
            for p in t["partitions"]
            if p.get("leader") is not None and alive.get(p["leader"])
        }

        async def describe_on(broker_id: int) -> tuple[int, dict[str, Any]]:
            """Every topic as one broker's own replicas see it; an unreachable broker contributes nothing."""
            found: dict[str, Any] = {}
            for topic in topics:
                try:
                    answer = await transport.request(
                        addresses[broker_id], Code.GET, f"/topics/{topic['name']}", timeout_s=timeout_s
                    )
                    found[topic["name"]] = answer.cbor()
                except PikafkaError:
                    continue
            return broker_id, found

        described = dict(await asyncio.gather(*(describe_on(b) for b in sorted(leaders) if b in addresses)))
    finally:
        await transport.close()

    partitions: list[PartitionRow] = []
    led: dict[int, int] = {}
    for topic in sorted(topics, key=lambda t: t["name"]):
        for p in sorted(topic["partitions"], key=lambda p: p["partition"]):
            leader = p.get("leader")
            if leader is not None:
                led[leader] = led.get(leader, 0) + 1
            local = _local_partition(described.get(leader, {}).get(topic["name"]), p["partition"])
            partitions.append(
                PartitionRow(
                    topic=topic["name"],
                    partition=int(p["partition"]),
                    leader=leader,
                    epoch=int(p.get("leader_epoch", 0)),
                    replicas=list(p.get("replicas", [])),
                    isr=list(p.get("isr", [])),
                    log_end=local.get("log_end_offset"),
                    high_watermark=local.get("high_watermark"),
                    under_replicated=len(p.get("isr", [])) < len(p.get("replicas", [])),
                )
            )
    brokers = [
        BrokerRow(broker_id, str(addresses[broker_id]), alive.get(broker_id, False), led.get(broker_id, 0))
        for broker_id in sorted(addresses)
    ]
    return ClusterView(meta.get("cluster_id"), meta.get("metadata_version"), brokers, partitions)


def _local_partition(description: Any, partition: int) -> dict[str, Any]:
    if not isinstance(description, dict):
        return {}
    for p in description.get("partitions", []):
        if p.get("partition") == partition:
            return dict(p)
    return {}


def format_cluster_json(view: ClusterView) -> str:
    return json.dumps(asdict(view), indent=2)


def format_cluster_table(view: ClusterView) -> str:
    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, list):
            return ",".join(str(v) for v in value) or "-"
        return str(value)

    def table(headers: list[str], rows: list[list[object]]) -> list[str]:
        text = [[cell(v) for v in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in text]
        return lines

    out = [f"cluster {view.cluster_id or '(standalone)'}  metadata version {cell(view.metadata_version)}", ""]
    out += table(
        ["BROKER", "ADDRESS", "ALIVE", "LEADS"],
        [[b.id, b.address, b.alive, b.partitions_led] for b in view.brokers],
    )
    out.append("")
    out += table(
        ["TOPIC", "PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "LOG END", "HIGH WATERMARK", "UNDER-REPLICATED"],
        [
            [
                p.topic,
                p.partition,
                p.leader,
                p.epoch,
                p.replicas,
                p.isr,
                p.log_end,
                p.high_watermark,
                p.under_replicated,
            ]
            for p in view.partitions
        ],
    )
    return "\n".join(out)
