"""The broker model: topics, produce, fetch, metadata and topic-data readings, with no notion of CoAP.

The resources in `pi_broker.resources` translate CoAP requests into calls here and PikafkaError back into response
codes; everything a request may change is validated whole before anything is written, so a refused request leaves
no trace. Partitions carry a role and a leader epoch (a standalone broker leads everything at epoch 0), batches carry
producer ids and sequences, and consumers read only below the high watermark.

Clustered (config.zookeeper set, docs/replication.md): which topics exist and who leads what come from the
zookeeper's snapshots, applied by ReplicaRoles; produce and consumer fetch are served by partition leaders only;
followers fetch with a replica id (ReplicaFetchServer); topic creation and deletion go to the zookeeper.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import socket
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from pi_broker.cluster_metadata import MetadataSnapshot
from pi_broker.config import BrokerConfig
from pi_broker.fsync_placement import FsyncPlacement
from pi_broker.group_commit import GroupCommit
from pi_broker.log.partition_log import PartitionLog
from pi_broker.messages import CreateTopicRequest, FetchRequest, ProduceRequest
from pi_broker.partition import Partition, Role, TopicPartition
from pi_broker.pending_acks import PendingProduce
from pi_broker.topic_registry import TopicRegistry, TopicSpec
from pikafka.atomic_file import read_json, write_json_atomic
from pikafka.background_task import cancel_and_wait
from pikafka.config_file import ConfigError
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import ACKS_ALL, ACKS_NONE, MAX_PARTITIONS, check_topic_name
from pikafka.records import (
    BatchHeader,
    CorruptBatchError,
    Record,
    decode_records,
    encode_batch,
    iter_batches,
    parse_header,
    validate_records,
)
from pikafka.topic_config import TopicConfig

log = logging.getLogger(__name__)

META_FILE = "meta.json"
LOCK_FILE = ".lock"
CONTENT_FORMAT_HEADER = "ct"  # record header holding a topic-data reading's CoAP content format, as decimal text
_WATCH_READ_BYTES = 256 * 1024


class ProduceResult(NamedTuple):
    topic: str
    partition: int
    base_offset: int
    last_offset: int


@dataclass(frozen=True)
class FetchedPartition:
    topic: str
    partition: int
    high_watermark: int
    log_start_offset: int
    records: bytes


@dataclass(frozen=True)
class Reading:
    """One topic-data record as the pub-sub resource serves it."""

    partition: int
    offset: int
    timestamp_ms: int
    value: bytes
    content_format: int | None


@dataclass
class Topic:
    spec: TopicSpec
    partitions: list[Partition]


class TopicAdmin(Protocol):
    """Where a clustered broker sends topic creation and deletion: the zookeeper (see ClusterLink)."""

    async def create_topic(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def delete_topic(self, name: str) -> None: ...


class _PlannedBatch(NamedTuple):
    partition: Partition
    batches: list[tuple[BatchHeader, bytes]]


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.registry = TopicRegistry(config.data_dir)
        self.clustered = config.zookeeper is not None
        # Clustered: None until the zookeeper assigns one (then kept in meta.json); standalone: made up at first start.
        self.cluster_id: str | None = None
        self.snapshot: MetadataSnapshot | None = None  # the latest applied zookeeper snapshot (clustered only)
        self.topic_admin: TopicAdmin | None = None  # set by the service on a clustered broker
        self._topics: dict[str, Topic] = {}
        self._deleting: set[str] = set()
        self._group_commit = GroupCommit(placement=FsyncPlacement(config.loop_fsync_max_ms / 1000))
        self._retention_task: asyncio.Task[None] | None = None
        self._started = False
        self._lock_fd: int | None = None

    # -- life cycle --------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Recover every topic's logs from disk (nothing is ever wiped here)."""
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        self._load_identity()
        self.registry.load()
        for name in self.registry.names():
            spec = self.registry.get(name)
            assert spec is not None
            self._topics[name] = Topic(spec, [self._open_partition(spec, i) for i in range(spec.partitions)])
            log.info(
                "recovered topic %s: %s",
                name,
                ", ".join(
                    f"{p.key} [{p.log.log_start_offset}, {p.log.log_end_offset})" for p in self._topics[name].partitions
                ),
            )

    def start(self) -> None:
        """Start the background tasks; needs a running event loop."""
        self._group_commit.start()
        self._retention_task = asyncio.create_task(self._retention_loop(), name="retention")
        self._started = True

    async def close(self) -> None:
        """Flush everything written and close every log."""
        await cancel_and_wait(self._retention_task)
        self._retention_task = None
        if self._started:
            await self._group_commit.stop()
            self._started = False
        for topic in self._topics.values():
            for partition in topic.partitions:
                try:
                    partition.close()
                except Exception:
                    log.exception("closing %s failed", partition.key)
        self._topics.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock_data_dir(self) -> None:
        """Hold an exclusive lock on the data dir for the process lifetime: two brokers appending to the same
        segment files would interleave batches and corrupt both logs."""
        fd = os.open(self.config.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(f"data dir {self.config.data_dir} is in use by another broker") from None
        self._lock_fd = fd

    def _load_identity(self) -> None:
        path = self.config.data_dir / META_FILE
        try:
            meta = read_json(path)
        except FileNotFoundError:
            # A clustered broker's first start: the zookeeper names the cluster when it registers.
            meta = {
                "cluster_id": None if self.clustered else secrets.token_urlsafe(16),
                "broker_id": self.config.broker_id,
            }
            write_json_atomic(path, meta)
        if not isinstance(meta, dict) or not isinstance(meta.get("cluster_id"), str | None):
            raise ConfigError(f"{path} is not a broker identity file")
        if meta["cluster_id"] is None and not self.clustered:
            meta = {**meta, "cluster_id": secrets.token_urlsafe(16)}
            write_json_atomic(path, meta)
        if meta.get("broker_id") != self.config.broker_id:
            # Kafka refuses this too: two ids for one data directory would confuse every replica about who holds what.
            raise ConfigError(
                f"data dir {self.config.data_dir} belongs to broker {meta.get('broker_id')}, "
                f"not {self.config.broker_id}"
            )
        self.cluster_id = meta["cluster_id"]

    def adopt_cluster_id(self, cluster_id: str) -> None:
        """Remember (durably) the cluster the zookeeper said this broker belongs to."""
        if self.cluster_id == cluster_id:
            return
        if self.cluster_id is not None:
            raise PikafkaError(
                ErrorCode.CLUSTER_ID_MISMATCH,
                f"this broker's data belongs to cluster {self.cluster_id!r}, not {cluster_id[:40]!r}",
            )
        write_json_atomic(
            self.config.data_dir / META_FILE, {"cluster_id": cluster_id, "broker_id": self.config.broker_id}
        )
        self.cluster_id = cluster_id
        log.info("joined cluster %s", cluster_id)

    def _open_partition(self, spec: TopicSpec, index: int) -> Partition:
        directory = self.registry.partition_dir(spec.name, index)
        return Partition(
            TopicPartition(spec.name, index),
            PartitionLog.open(directory, spec.config),
            broker_id=self.config.broker_id,
            clustered=self.clustered,
        )

    @property
    def topic_count(self) -> int:
        return len(self._topics)

    def partitions(self) -> list[Partition]:
        return [p for topic in self._topics.values() for p in topic.partitions]

    def find_partition(self, key: TopicPartition) -> Partition | None:
        topic = self._topics.get(key.topic)
        if topic is None or not 0 <= key.partition < len(topic.partitions):
            return None
        return topic.partitions[key.partition]

    def local_topic(self, name: str) -> Topic | None:
        return self._topics.get(name)

    @property
    def group_commit(self) -> GroupCommit:
        return self._group_commit

    # -- admin -------------------------------------------------------------------------------------------------

    def list_topics(self) -> list[str]:
        if self.clustered and self.snapshot is not None:
            return sorted(self.snapshot.topics)  # the cluster's topics, including those this broker holds no replica of
        return sorted(self._topics)

    def create_topic(self, request: CreateTopicRequest) -> TopicSpec:
        name = check_topic_name(request.name)
        if not 1 <= request.partitions <= MAX_PARTITIONS:
            raise PikafkaError(ErrorCode.INVALID_PARTITIONS, f"partitions must be between 1 and {MAX_PARTITIONS}")
        if request.replication_factor != 1:
            raise PikafkaError(
                ErrorCode.INVALID_REPLICATION_FACTOR,
                f"replication_factor {request.replication_factor} is not possible with 1 live broker",
            )
        config = self._topic_config(request.config)
        if name in self._topics or name in self._deleting:
            raise PikafkaError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        return self.create_local_topic(TopicSpec(name, request.partitions, request.replication_factor, config))

    def create_local_topic(self, spec: TopicSpec) -> TopicSpec:
        """Create the topic's directories and logs and list it (validated already: by create_topic, or by the
        zookeeper when a snapshot brings a topic this broker holds replicas of)."""
        name = spec.name
        try:
            self.registry.prepare_directories(spec)
            partitions = [self._open_partition(spec, i) for i in range(spec.partitions)]
        except OSError as exc:
            raise PikafkaError(ErrorCode.STORAGE_ERROR, f"cannot create topic {name!r}: {exc}") from exc
        try:
            self.registry.add(spec)
        except OSError as exc:
            for partition in partitions:
                partition.close()
            raise PikafkaError(ErrorCode.STORAGE_ERROR, f"cannot record topic {name!r}: {exc}") from exc
        self._topics[name] = Topic(spec, partitions)
        log.info("created topic %s with %d partition(s)", name, spec.partitions)
        return spec

    def _topic_config(self, raw: object) -> TopicConfig:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "config must be a map")
        # Settings not given come from the broker's [topic_defaults].
        merged = {**self.config.topic_defaults.to_dict(), **raw}
        return TopicConfig.from_dict(merged)

    def describe_topic(self, name: str) -> dict[str, Any]:
        topic = self._topic(name)
        return {
            "name": name,
            "partitions": [
                {
                    **self._partition_placement(p),
                    "log_start_offset": p.log.log_start_offset,
                    "log_end_offset": p.log.log_end_offset,
                    "high_watermark": p.high_watermark,
                }
                for p in topic.partitions
            ],
            "replication_factor": topic.spec.replication_factor,
            "config": topic.spec.config.to_dict(),
        }

    async def delete_topic(self, name: str) -> None:
        topic = self._topic(name)
        del self._topics[name]
        self._deleting.add(name)
        try:
            self.registry.remove(name)
            await self._group_commit.forget(topic.partitions)
            for partition in topic.partitions:
                partition.delete()
        finally:
            self._deleting.discard(name)
        log.info("deleted topic %s", name)

    def metadata(self, topics: list[str] | None = None) -> dict[str, Any]:
        names = topics if topics else self.list_topics()
        if self.clustered:
            if self.snapshot is None:
                raise PikafkaError(
                    ErrorCode.BROKER_NOT_AVAILABLE, "this broker has no metadata from the zookeeper yet; retry"
                )
            return self.snapshot.filtered(topics)
        described = []
        for name in names:
            topic = self._topic(name)
            described.append({"name": name, "partitions": [self._partition_placement(p) for p in topic.partitions]})
        return {
            "cluster_id": self.cluster_id,
            "controller": None,
            "brokers": [{"id": self.config.broker_id, "host": self.advertised_host, "port": self.config.port}],
            "topics": described,
        }

    @property
    def advertised_host(self) -> str:
        if self.config.advertised_host:
            return self.config.advertised_host
        if self.config.bind in ("0.0.0.0", "::", ""):
            return socket.gethostname()
        return self.config.bind

    def _partition_placement(self, partition: Partition) -> dict[str, Any]:
        if self.clustered:
            assignment = None
            if self.snapshot is not None and partition.key.topic in self.snapshot.topics:
                parts = self.snapshot.topics[partition.key.topic].partitions
                if partition.key.partition < len(parts):
                    assignment = parts[partition.key.partition]
            return {
                "partition": partition.key.partition,
                "leader": assignment.leader if assignment else None,
                "leader_epoch": assignment.leader_epoch if assignment else partition.leader_epoch,
                "replicas": list(assignment.replicas) if assignment else list(partition.replicas),
                "isr": list(assignment.isr) if assignment else [],
                "role": partition.role.value,
            }
        me = self.config.broker_id
        return {
            "partition": partition.key.partition,
            "leader": me,
            "leader_epoch": partition.leader_epoch,
            "replicas": [me],
            "isr": [me],
        }

    def _topic(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name[:60]!r} does not exist")
        return topic

    def _partition(self, name: str, index: int) -> Partition:
        topic = self._topic(name)
        if not 0 <= index < len(topic.partitions):
            raise PikafkaError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"topic {name!r} has no partition {index} (it has {len(topic.partitions)})",
            )
        return topic.partitions[index]

    # -- produce -----------------------------------------------------------------------------------------------

    async def produce(self, request: ProduceRequest) -> list[ProduceResult]:
        """Append the request's batches; returns their offsets once the request's acks level holds."""
        pending = self.produce_nowait(request)
        if not pending.waiting:
            return pending.settle_now()
        return await pending.wait(request.timeout_ms / 1000)

    def produce_nowait(self, request: ProduceRequest) -> PendingProduce[list[ProduceResult]]:
        """Check the whole request and append its batches now, with no await in between, so the checks still hold
        when we write (PikafkaError, with nothing written, if any batch is refused). The returned acknowledgement
        carries the offsets; partitions release it once the acks level holds, or answer it at once when `waiting`
        is False:

        - acks=0: at once. Standalone acks>=1: once fsynced. Clustered acks=1: once fsynced on this leader.
        - Clustered acks=all: refused before appending when the ISR is smaller than min_insync_replicas, else once
          the high watermark passes the records (every in-sync replica holds them durably), or an error; never a
          silent success.
        - A topic with flush_interval_ms > 0: after the write (acks=all still waits for the replicas).
        """
        plan = self._plan_produce(request)
        acks_all = self.clustered and request.acks == ACKS_ALL
        if acks_all:
            for planned in plan:
                _require_enough_replicas(planned.partition)
        results: list[ProduceResult] = []
        last_offsets: dict[Partition, int] = {}
        for planned in plan:
            partition = planned.partition
            first, last = self._append_planned(planned)
            last_offsets[partition] = max(last_offsets.get(partition, -1), last)
            results.append(ProduceResult(partition.key.topic, partition.key.partition, first, last))
        touched = list(last_offsets)
        pending: PendingProduce[list[ProduceResult]] = PendingProduce(
            results,
            # Kafka's rule: replicated to an ISR that shrank below the minimum meanwhile is not good enough.
            check=(lambda: _require_replicas_after_append(touched)) if acks_all else None,
            on_timeout=lambda: _produce_timeout(touched, acks_all, request.timeout_ms),
        )
        if request.acks == ACKS_NONE:
            return pending
        for partition, last in last_offsets.items():
            if acks_all:
                partition.ack_when_committed(last, pending)
            elif partition.log.config.flush_interval_ms > 0:
                continue
            elif self.clustered:
                partition.ack_when_flushed(last, pending)
            else:
                partition.ack_when_committed(last, pending)  # standalone: the high watermark is the flushed offset
        return pending

    def _append_planned(self, planned: _PlannedBatch) -> tuple[int, int]:
        """Append one partition's checked batches; (first, last) offsets, a duplicate's original ones included."""
        partition = planned.partition
        first = last = -1
        wrote = False
        for header, batch in planned.batches:
            outcome = partition.append(batch, header)
            wrote = wrote or not outcome.duplicate
            if first < 0:
                first = outcome.base_offset
            last = max(last, outcome.last_offset)
        if wrote:
            self._group_commit.appended(partition)
        return first, last

    def _plan_produce(self, request: ProduceRequest) -> list[_PlannedBatch]:
        plan: list[_PlannedBatch] = []
        per_partition: dict[Partition, list[BatchHeader]] = {}
        for i, entry in enumerate(request.batches):
            partition = self._partition(entry.topic, entry.partition)
            partition.require_leader()
            batches = _split_batches(entry.records, i)
            limit = partition.log.config.max_message_bytes
            for header, _ in batches:
                if header.size > limit:
                    raise PikafkaError(
                        ErrorCode.RECORD_TOO_LARGE,
                        f"batches[{i}]: a batch of {header.size} bytes exceeds max_message_bytes {limit} "
                        f"of topic {entry.topic!r}",
                    )
            per_partition.setdefault(partition, []).extend(h for h, _ in batches)
            plan.append(_PlannedBatch(partition, batches))
        for partition, headers in per_partition.items():
            partition.check_appends(headers)
        return plan

    # -- fetch -------------------------------------------------------------------------------------------------

    async def fetch(self, request: FetchRequest) -> list[FetchedPartition]:
        """A consumer's fetch: records below the high watermark, from the partition's leader only."""
        deadline = time.monotonic() + request.wait_ms / 1000
        while True:
            partitions = [self._partition(pos.topic, pos.partition) for pos in request.partitions]
            for pos, partition in zip(request.partitions, partitions, strict=True):
                partition.require_leader(pos.leader_epoch)
                _check_offset(partition, pos.offset)
            results = self._read(request, partitions)
            remaining = deadline - time.monotonic()
            if any(r.records for r in results) or remaining <= 0:
                return results
            # No await between reading and taking these futures, so no advance can slip between them.
            waiters = {partition.changed() for partition in partitions}
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)

    def _read(self, request: FetchRequest, partitions: list[Partition]) -> list[FetchedPartition]:
        budget = request.max_bytes
        records_left = request.max_records
        results = []
        for pos, partition in zip(request.partitions, partitions, strict=True):
            hw = partition.high_watermark
            data = b""
            exhausted = budget <= 0 or (records_left is not None and records_left <= 0)
            if pos.offset < hw and not exhausted:
                data = partition.log.read(pos.offset, max(budget, 1), max_offset=hw, max_records=records_left)
                budget -= len(data)
                if records_left is not None:
                    records_left -= _count_records_from(data, pos.offset)
            results.append(FetchedPartition(pos.topic, pos.partition, hw, partition.log.log_start_offset, bytes(data)))
        return results

    # -- topic data (pub-sub) ----------------------------------------------------------------------------------

    async def append_reading(self, topic_name: str, value: bytes, key: bytes, content_format: int | None) -> Reading:
        """Append one reading; returns once it is durable (or written, for a topic with flush_interval_ms > 0)."""
        topic = self._topic(topic_name)
        limit = topic.spec.config.max_message_bytes
        if len(value) > limit:
            raise PikafkaError(
                ErrorCode.RECORD_TOO_LARGE, f"a {len(value)}-byte reading exceeds max_message_bytes {limit}"
            )
        # Same key, same partition: one sensor's readings stay in order.
        partition = topic.partitions[zlib.crc32(key) % len(topic.partitions)]
        partition.require_leader()
        headers = [(CONTENT_FORMAT_HEADER, str(content_format).encode())] if content_format is not None else []
        batch = encode_batch([Record(value=value, key=key, headers=headers)])
        header = parse_header(batch)
        if header.size > limit:
            raise PikafkaError(ErrorCode.RECORD_TOO_LARGE, f"the reading's batch exceeds max_message_bytes {limit}")
        outcome = partition.append(batch, header)
        self._group_commit.appended(partition)
        reading = Reading(partition.key.partition, outcome.base_offset, header.first_timestamp, value, content_format)
        # Clustered, a reading is answered like acks=all: once every in-sync replica holds it.
        if self.clustered or partition.log.config.flush_interval_ms == 0:
            what = "replicated" if self.clustered else "fsynced"
            pending: PendingProduce[Reading] = PendingProduce(
                reading,
                on_timeout=lambda: PikafkaError(
                    ErrorCode.REQUEST_TIMED_OUT, f"the reading was written but not {what} within 10 s"
                ),
            )
            partition.ack_when_committed(outcome.last_offset, pending)
            if pending.waiting:
                return await pending.wait(10.0)
        return reading

    def latest_reading(self, topic_name: str) -> Reading | None:
        """The newest durable record of the topic (by timestamp across partitions), or None when it has none."""
        topic = self._topic(topic_name)
        latest: Reading | None = None
        for partition in topic.partitions:
            hw = partition.high_watermark
            if hw <= partition.log.log_start_offset:
                continue
            raw = partition.log.read_last_batch(max_offset=hw)
            if raw is None:
                continue
            records = [r for r in decode_records(raw) if r.offset < hw]
            if not records:
                continue
            reading = _reading(partition.key.partition, records[-1])
            if latest is None or reading.timestamp_ms >= latest.timestamp_ms:
                latest = reading
        return latest

    def watch(self, topic_name: str) -> TopicWatch:
        """Every record that becomes durable on the topic from this call on (see TopicWatch)."""
        return TopicWatch(topic_name, self._topic(topic_name).partitions)

    # -- retention ---------------------------------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        interval = self.config.retention_check_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self.apply_retention()

    def apply_retention(self) -> int:
        """Drop segments past their topic's retention; returns how many went."""
        now_ms = int(time.time() * 1000)
        removed = 0
        for partition in self.partitions():
            if partition.closed or self._group_commit.is_flushing(partition):
                continue  # a segment being fsynced right now is not deleted under the worker thread's feet
            try:
                dropped = partition.log.apply_retention(now_ms)
            except Exception:
                log.exception("retention on %s failed", partition.key)
                continue
            if dropped:
                log.info("retention removed %d segment(s) of %s", dropped, partition.key)
                removed += dropped
        return removed


def _split_batches(records: bytes, index: int) -> list[tuple[BatchHeader, bytes]]:
    """Cut a produce entry's `records` into whole batches, checking each one's CRC and record framing."""
    view = memoryview(records)
    out: list[tuple[BatchHeader, bytes]] = []
    pos = 0
    try:
        while pos < len(view):
            header = validate_records(view[pos:])
            # One batch per entry is the common case: keep the bytes object cbor2 made instead of copying it.
            whole = pos == 0 and header.size == len(records)
            out.append((header, records if whole else bytes(view[pos : pos + header.size])))
            pos += header.size
    except CorruptBatchError as exc:
        raise PikafkaError(ErrorCode.CORRUPT_MESSAGE, f"batches[{index}]: {exc} at byte {pos}") from None
    if not out:
        raise PikafkaError(ErrorCode.CORRUPT_MESSAGE, f"batches[{index}]: records is empty")
    return out


def _require_replicas_after_append(partitions: list[Partition]) -> None:
    for partition in partitions:
        _require_enough_replicas(partition, after_append=True)


def _produce_timeout(partitions: list[Partition], acks_all: bool, timeout_ms: int) -> PikafkaError:
    if acks_all:
        try:
            _require_replicas_after_append(partitions)
        except PikafkaError as exc:
            return exc
    return PikafkaError(
        ErrorCode.REQUEST_TIMED_OUT,
        f"records were written but not {'replicated' if acks_all else 'fsynced'} within {timeout_ms} ms",
    )


def _require_enough_replicas(partition: Partition, *, after_append: bool = False) -> None:
    isr = partition.isr.isr if partition.isr is not None and partition.role is Role.LEADER else ()
    needed = partition.min_insync_replicas
    if len(isr) < needed:
        when = "after the append" if after_append else "so nothing was appended"
        raise PikafkaError(
            ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND if after_append else ErrorCode.NOT_ENOUGH_REPLICAS,
            f"{partition.key} has {len(isr)} in-sync replica(s) {list(isr)}, min_insync_replicas is {needed} ({when})",
        )


def _check_offset(partition: Partition, offset: int) -> None:
    start, end = partition.log.log_start_offset, partition.log.log_end_offset
    if not start <= offset <= end:
        raise PikafkaError(
            ErrorCode.OFFSET_OUT_OF_RANGE, f"offset {offset} is outside [{start}, {end}] of partition {partition.key}"
        )


def _count_records_from(data: bytes, offset: int) -> int:
    count = 0
    pos = 0
    while pos < len(data):
        header = parse_header(data, pos)
        count += header.next_offset - max(header.base_offset, offset)
        pos += header.size
    return count


def _reading(partition: int, record: Any) -> Reading:
    content_format: int | None = None
    for key, value in record.headers:
        if key == CONTENT_FORMAT_HEADER and value is not None:
            try:
                content_format = int(value)
            except ValueError:
                content_format = None
    return Reading(partition, record.offset, record.timestamp_ms, record.value or b"", content_format)


class TopicWatch:
    """Async iterator over the records of a topic that become durable after its creation, in append order per
    partition. The starting positions are taken when it is created, so a caller that reads the latest record in
    the same step neither misses nor repeats one."""

    def __init__(self, topic_name: str, partitions: list[Partition]) -> None:
        self.topic_name = topic_name
        self._partitions = list(partitions)
        self._positions = {p: p.high_watermark for p in self._partitions}

    def __aiter__(self) -> AsyncIterator[Reading]:
        return self._follow()

    async def _follow(self) -> AsyncIterator[Reading]:
        while True:
            progressed = False
            for partition in self._partitions:
                if partition.closed:
                    raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {self.topic_name!r} was deleted")
                while self._positions[partition] < partition.high_watermark:
                    progressed = True
                    start = self._positions[partition]
                    hw = partition.high_watermark
                    try:
                        data = partition.log.read(start, _WATCH_READ_BYTES, max_offset=hw)
                    except PikafkaError as exc:
                        if exc.code is not ErrorCode.OFFSET_OUT_OF_RANGE:
                            raise
                        # Retention removed what we had not sent yet; carry on from what is left.
                        self._positions[partition] = max(start + 1, partition.log.log_start_offset)
                        continue
                    if not data:
                        break
                    for header, view in iter_batches(data):
                        self._positions[partition] = max(self._positions[partition], header.next_offset)
                        for record in decode_records(view):
                            if start <= record.offset < hw:
                                yield _reading(partition.key.partition, record)
            if not progressed:
                # Nothing new anywhere: the futures are taken with no await since the check above.
                waiters = {p.changed() for p in self._partitions}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
