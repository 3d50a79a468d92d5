"""The cluster model and its election rules, as a pure state machine.

No sockets, no aiocoap, no clock: every operation that depends on time takes `now` (seconds, any monotonic origin),
so the rules are tested with plain floats and the service decides where time comes from.

The student prototype's Mini-Zookeeper kept a JSON broker list, found a dead broker by asking each in turn and then
picked a new leader at random before calling `send_leader_message`. What is kept from it: the broker list (now with
sessions: a broker is alive while it heartbeats, like the lifetimes of aiocoap's resource directory) and the leader
announcement (now a metadata snapshot pushed to every broker, see metadata_push.py). What is not: a leader is never
chosen at random. Only an in-sync replica may lead (unless a topic opts into unclean elections), the one with the
longest reported log wins, and every change of leader bumps the partition's leader epoch so a stale leader is fenced.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import INTERNAL_TOPICS, MAX_PARTITIONS, check_topic_name
from pikafka.topic_config import TopicConfig

STATE_FORMAT = 1  # version of the to_json() document; bump on incompatible changes


@dataclass
class Broker:
    """One broker as the zookeeper sees it.

    Three session states: alive (registered, heartbeating; `deadline` set), pending (known from the state file after
    a zookeeper restart and given one session timeout to come back; `deadline` set, not alive) and dead (no
    `deadline`). Only the first counts as alive in metadata and elections; the first two hold the broker id.
    """

    id: int
    host: str
    port: int
    rack: str | None
    incarnation: str
    alive: bool = False
    deadline: float | None = None  # session expiry; never persisted (a clock reading means nothing after restart)

    def has_session(self) -> bool:
        return self.deadline is not None


@dataclass
class Partition:
    partition: int
    replicas: list[int]
    leader: int | None
    leader_epoch: int
    isr: list[int]
    # Per replica, from heartbeats: its log end offset and the leader epoch of its log's end. Elections compare
    # (epoch, offset) like Raft compares (last term, last index): "the longest log". Not in the metadata snapshot.
    log_end_offsets: dict[int, int] = field(default_factory=dict)
    log_epochs: dict[int, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "leader": self.leader,
            "leader_epoch": self.leader_epoch,
            "replicas": list(self.replicas),
            "isr": list(self.isr),
        }


@dataclass
class Topic:
    name: str
    replication_factor: int
    config: TopicConfig
    partitions: list[Partition]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "replication_factor": self.replication_factor,
            "config": self.config.to_dict(),
            "partitions": [p.describe() for p in self.partitions],
        }


@dataclass(frozen=True)
class PartitionReport:
    """What a broker tells about one of its partition replicas in a heartbeat."""

    topic: str
    partition: int
    log_end_offset: int
    leader_epoch: int


class ClusterState:
    """Brokers, topics and leaders of one cluster; see the module docstring and docs/cluster.md for the rules."""

    def __init__(self, session_timeout: float, cluster_id: str | None = None) -> None:
        if session_timeout <= 0:
            raise ValueError("session_timeout must be positive")
        self.session_timeout = session_timeout
        self.cluster_id = cluster_id or uuid.uuid4().hex
        self.metadata_version = 0
        self.brokers: dict[int, Broker] = {}
        self.topics: dict[str, Topic] = {}
        # Names of deleted topics. Brokers delete local data only for these: a topic merely missing from a snapshot
        # (say, one from an older zookeeper state) must never cost data.
        self.deleted_topics: list[str] = []
        # Counts topic creations; each topic's placement starts one broker further, so leaders spread across topics.
        self.placement_counter = 0
        self._events: list[str] = []

    # ----------------------------------------------------------------------------------------------- observations

    def drain_events(self) -> list[str]:
        """Human-readable lines for what changed (joins, deaths, elections) since the last call; for the log."""
        events, self._events = self._events, []
        return events

    def live_brokers(self) -> list[Broker]:
        return [b for _, b in sorted(self.brokers.items()) if b.alive]

    def is_alive(self, broker_id: int) -> bool:
        b = self.brokers.get(broker_id)
        return b is not None and b.alive

    def snapshot(self, topics: Iterable[str] | None = None) -> dict[str, Any]:
        """The metadata map brokers and clients see (brokers serve the same shape at /metadata)."""
        wanted = None if topics is None else set(topics)
        return {
            "cluster_id": self.cluster_id,
            "metadata_version": self.metadata_version,
            "controller": None,
            "brokers": [
                {"id": b.id, "host": b.host, "port": b.port, "rack": b.rack, "alive": b.alive}
                for _, b in sorted(self.brokers.items())
            ],
            "topics": [t.describe() for name, t in sorted(self.topics.items()) if wanted is None or name in wanted],
            "deleted_topics": sorted(self.deleted_topics),
        }

    def partition(self, topic: str, partition: int) -> Partition:
        t = self.topics.get(topic)
        if t is None:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic[:60]!r} does not exist")
        if not 0 <= partition < len(t.partitions):
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} has no partition {partition}")
        return t.partitions[partition]

    # ------------------------------------------------------------------------------------------------- sessions

    def register(
        self,
        broker_id: int,
        host: str,
        port: int,
        rack: str | None,
        incarnation: str,
        cluster_id_of_broker: str | None,
        now: float,
    ) -> None:
        """A broker (re)joins. Raises CLUSTER_ID_MISMATCH or BROKER_ID_IN_USE; otherwise it is alive from `now`."""
        self.expire(now)  # a session that ran out before this request is over, whatever the service's tick
        if cluster_id_of_broker is not None and cluster_id_of_broker != self.cluster_id:
            # Its data came from another cluster: adopting it would mix two clusters' logs.
            raise PikafkaError(
                ErrorCode.CLUSTER_ID_MISMATCH,
                f"broker {broker_id} belongs to cluster {cluster_id_of_broker[:40]!r}, this is {self.cluster_id!r}",
            )
        existing = self.brokers.get(broker_id)
        if existing is not None and existing.has_session() and existing.incarnation != incarnation:
            if (existing.host, existing.port) != (host, port):
                raise PikafkaError(
                    ErrorCode.BROKER_ID_IN_USE,
                    f"broker id {broker_id} is held by a live broker at {existing.host}:{existing.port}",
                )
            # Same address, new incarnation: the broker restarted faster than its session expired. Its previous life
            # ends here, so it loses leadership and ISR places as if it had died (it may have lost unflushed data),
            # then joins again like any returning broker.
            self._broker_died(existing, "restarted with a new incarnation")
        changed = (
            existing is None
            or not existing.alive
            or (existing.host, existing.port, existing.rack, existing.incarnation) != (host, port, rack, incarnation)
        )
        broker = Broker(broker_id, host, port, rack, incarnation, alive=True, deadline=now + self.session_timeout)
        self.brokers[broker_id] = broker
        if changed:
            self._events.append(f"broker {broker_id} joined at {host}:{port} (incarnation {incarnation})")
            self._bump()
            self._broker_returned(broker)

    def heartbeat(self, broker_id: int, incarnation: str, reports: Sequence[PartitionReport], now: float) -> None:
        """Re-arm the broker's session and record its log end offsets; UNKNOWN_BROKER if it has no session."""
        self.expire(now)
        broker = self.brokers.get(broker_id)
        if broker is None or not broker.has_session() or broker.incarnation != incarnation:
            raise PikafkaError(ErrorCode.UNKNOWN_BROKER, f"no live session for broker {broker_id}; register again")
        broker.deadline = now + self.session_timeout
        if not broker.alive:
            # A broker remembered from before a zookeeper restart is back within its grace period.
            broker.alive = True
            self._events.append(f"broker {broker_id} is back at {broker.host}:{broker.port}")
            self._bump()
            self._broker_returned(broker)
        for r in reports:
            t = self.topics.get(r.topic)
            if t is None or not 0 <= r.partition < len(t.partitions):
                continue  # a topic deleted meanwhile; the broker learns it from the metadata
            p = t.partitions[r.partition]
            if broker_id in p.replicas:
                p.log_end_offsets[broker_id] = r.log_end_offset
                p.log_epochs[broker_id] = r.leader_epoch

    def expire(self, now: float) -> bool:
        """Declare every broker whose session deadline has passed dead, moving its leaderships; True if any."""
        expired = [b for _, b in sorted(self.brokers.items()) if b.deadline is not None and b.deadline <= now]
        for b in expired:
            self._broker_died(b, "session expired" if b.alive else "did not come back after the zookeeper restart")
        return bool(expired)

    def _broker_died(self, broker: Broker, why: str) -> None:
        broker.alive = False
        broker.deadline = None
        self._events.append(f"broker {broker.id} died ({why})")
        self._bump()
        dead = broker.id
        for t in self._topics_in_order():
            for p in t.partitions:
                # What it reported describes a life that is over (a restart may lose unflushed records).
                p.log_end_offsets.pop(dead, None)
                p.log_epochs.pop(dead, None)
                if p.leader == dead:
                    self._elect(t, p)
                elif p.leader is not None and dead in p.isr and len(p.isr) > 1:
                    # A follower in the ISR: it no longer replicates, so acks=all must stop waiting for it.
                    old = list(p.isr)
                    p.isr = [r for r in p.isr if r != dead]
                    self._events.append(f"partition {t.name}-{p.partition}: isr {old} -> {p.isr} (broker {dead} died)")
                # A leaderless partition keeps its ISR frozen: those members are the only clean candidates.

    def _broker_returned(self, broker: Broker) -> None:
        """A broker became alive: it takes the leaderless partitions it may lead (cleanly, or uncleanly if allowed)."""
        for t in self._topics_in_order():
            for p in t.partitions:
                if p.leader is not None or broker.id not in p.replicas:
                    continue
                if broker.id in p.isr or (t.config.unclean_leader_election == 1 and not self._live_isr(p)):
                    self._elect(t, p)

    # ------------------------------------------------------------------------------------------------- elections

    def _live_isr(self, p: Partition) -> list[int]:
        return [r for r in p.replicas if r in p.isr and self.is_alive(r)]

    def _longest_log(self, p: Partition, candidates: list[int]) -> int:
        # A log ending in a later leader epoch is the more up to date one, whatever its length (Raft's rule: a longer
        # tail from an older epoch may be records the newer leader never had, to be truncated). Within an epoch the
        # longer log wins. max() keeps the first of equal elements, and candidates are in replicas order: ties go to
        # the preferred replica. An unreported log counts as empty.
        return max(candidates, key=lambda r: (p.log_epochs.get(r, -1), p.log_end_offsets.get(r, -1)))

    def _elect(self, t: Topic, p: Partition) -> None:
        """Choose a leader for `p`, whose leader just died or which is leaderless. Never at random."""
        old_leader = p.leader
        clean = self._live_isr(p)
        unclean = False
        if clean:
            new_leader: int | None = self._longest_log(p, clean)
            p.isr = [r for r in p.replicas if r in clean]
        elif t.config.unclean_leader_election == 1 and (live := [r for r in p.replicas if self.is_alive(r)]):
            # Availability over acknowledged data, by the topic's explicit choice: whatever the dead ISR held beyond
            # this replica's log is lost.
            new_leader = self._longest_log(p, live)
            p.isr = [new_leader]
            unclean = True
        else:
            # Offline until an ISR member returns. The ISR keeps its members: they (including the broker that just
            # died) are the only replicas known to hold every acknowledged record.
            new_leader = None
        p.leader = new_leader
        p.leader_epoch += 1
        self._bump()
        shown = "none" if old_leader is None else str(old_leader)
        if new_leader is None:
            self._events.append(
                f"partition {t.name}-{p.partition}: leader {shown} -> none (offline: no live in-sync replica), "
                f"epoch {p.leader_epoch}, isr {p.isr}"
            )
        else:
            self._events.append(
                f"partition {t.name}-{p.partition}: leader {shown} -> {new_leader}, epoch {p.leader_epoch}, "
                f"isr {p.isr}" + (" (UNCLEAN election: acknowledged records may be lost)" if unclean else "")
            )

    def alter_isr(
        self, topic: str, partition: int, leader_id: int, leader_epoch: int, new_isr: Sequence[int]
    ) -> Partition:
        """The partition's current leader changes its ISR; FENCED_LEADER_EPOCH for anyone else."""
        p = self.partition(topic, partition)
        if p.leader != leader_id or p.leader_epoch != leader_epoch:
            raise PikafkaError(
                ErrorCode.FENCED_LEADER_EPOCH,
                f"{topic}-{partition} is led by {p.leader} in epoch {p.leader_epoch}, "
                f"not by {leader_id} in epoch {leader_epoch}",
            )
        if len(set(new_isr)) != len(new_isr):
            raise PikafkaError(ErrorCode.INVALID_REQUEST, "isr lists a broker twice")
        if leader_id not in new_isr:
            raise PikafkaError(ErrorCode.INVALID_REQUEST, f"isr {list(new_isr)} must include the leader {leader_id}")
        outside = [r for r in new_isr if r not in p.replicas]
        if outside:
            raise PikafkaError(ErrorCode.INVALID_REQUEST, f"brokers {outside} are not replicas of {topic}-{partition}")
        joining_dead = [
            r for r in new_isr if r not in p.isr and not (r in self.brokers and self.brokers[r].has_session())
        ]
        if joining_dead:
            # A broker without a session cannot be in sync; letting it join would make it an election candidate.
            raise PikafkaError(
                ErrorCode.INVALID_REQUEST, f"brokers {joining_dead} are not alive and cannot join the isr"
            )
        isr = [r for r in p.replicas if r in new_isr]
        if isr != p.isr:
            old, p.isr = p.isr, isr
            self._bump()
            self._events.append(f"partition {topic}-{partition}: isr {old} -> {isr} (leader {leader_id})")
        return p

    # --------------------------------------------------------------------------------------------------- topics

    def create_topic(
        self,
        name: object,
        partitions: int,
        replication_factor: int,
        config: Mapping[str, Any] | None,
        now: float,
    ) -> Topic:
        """Create a topic with replicas spread over the live brokers; leader = first replica, ISR = all."""
        self.expire(now)
        # The brokers create the internal topics (docs/groups.md); any other "__" name is refused.
        topic_name = check_topic_name(name, internal=name in INTERNAL_TOPICS)
        if topic_name in self.topics:
            raise PikafkaError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {topic_name!r} already exists")
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise PikafkaError(ErrorCode.INVALID_PARTITIONS, f"partitions must be between 1 and {MAX_PARTITIONS}")
        live = [b.id for b in self.live_brokers()]
        if not 1 <= replication_factor <= len(live):
            raise PikafkaError(
                ErrorCode.INVALID_REPLICATION_FACTOR,
                f"replication_factor {replication_factor} must be between 1 and the {len(live)} live brokers",
            )
        cfg = TopicConfig.from_dict(dict(config) if config is not None else None)
        if config is None or "min_insync_replicas" not in config:
            # With three copies, insisting on two keeps acks=all writes safe through one broker's loss.
            cfg = replace(cfg, min_insync_replicas=2 if replication_factor >= 3 else 1)
        if cfg.min_insync_replicas > replication_factor:
            raise PikafkaError(
                ErrorCode.INVALID_CONFIG,
                f"min_insync_replicas {cfg.min_insync_replicas} exceeds replication_factor {replication_factor}",
            )
        assignment = place_replicas(live, partitions, replication_factor, self.placement_counter)
        self.placement_counter += 1
        topic = Topic(
            topic_name,
            replication_factor,
            cfg,
            [Partition(i, reps, reps[0], 0, list(reps)) for i, reps in enumerate(assignment)],
        )
        self.topics[topic_name] = topic
        if topic_name in self.deleted_topics:
            self.deleted_topics.remove(topic_name)
        self._bump()
        self._events.append(
            f"topic {topic_name} created: {partitions} partitions, replication factor {replication_factor}, "
            f"leaders {[p.leader for p in topic.partitions]}"
        )
        return topic

    def delete_topic(self, name: str) -> None:
        if name not in self.topics:
            raise PikafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name[:60]!r} does not exist")
        del self.topics[name]
        if name not in self.deleted_topics:
            self.deleted_topics.append(name)
        self._bump()
        self._events.append(f"topic {name} deleted")

    def _topics_in_order(self) -> list[Topic]:
        return [t for _, t in sorted(self.topics.items())]

    def _bump(self) -> None:
        self.metadata_version += 1

    # ---------------------------------------------------------------------------------------------- persistence

    def to_json(self) -> dict[str, Any]:
        """Everything worth keeping across a restart (not session deadlines: they are clock readings)."""
        return {
            "format": STATE_FORMAT,
            "cluster_id": self.cluster_id,
            "metadata_version": self.metadata_version,
            "placement_counter": self.placement_counter,
            "brokers": [
                {
                    "id": b.id,
                    "host": b.host,
                    "port": b.port,
                    "rack": b.rack,
                    "incarnation": b.incarnation,
                    # "had a session": alive or still within its post-restart grace period
                    "alive": b.has_session(),
                }
                for _, b in sorted(self.brokers.items())
            ],
            "topics": [
                {
                    **t.describe(),
                    "partitions": [
                        {
                            **p.describe(),
                            "log_end_offsets": {str(k): v for k, v in sorted(p.log_end_offsets.items())},
                            "log_epochs": {str(k): v for k, v in sorted(p.log_epochs.items())},
                        }
                        for p in t.partitions
                    ],
                }
                for _, t in sorted(self.topics.items())
            ],
            "deleted_topics": sorted(self.deleted_topics),
        }

    @classmethod
    def from_json(cls, doc: Any, session_timeout: float, now: float) -> ClusterState:
        """Rebuild from `to_json()` output; ValueError naming the first problem if the document is not one.

        Brokers that had a session come back as pending: not alive, but holding their id and leaderships for one
        session timeout, so restarting the zookeeper does not trigger elections while they heartbeat again.
        """
        d = _Reader(doc, "state")
        if d.req_int("format") != STATE_FORMAT:
            raise ValueError(f"state: unsupported format {doc.get('format')!r} (expected {STATE_FORMAT})")
        state = cls(session_timeout, cluster_id=d.req_str("cluster_id"))
        state.metadata_version = d.req_int("metadata_version")
        state.placement_counter = d.req_int("placement_counter")
        leaders: set[int] = set()
        for i, raw_t in enumerate(d.req_list("topics")):
            t = _Reader(raw_t, f"topics[{i}]")
            name = t.req_str("name")
            try:
                cfg = TopicConfig.from_dict(t.req_map("config"))
            except PikafkaError as exc:
                raise ValueError(f"topic {name!r}: {exc.reason}") from None
            parts = []
            for j, raw_p in enumerate(t.req_list("partitions")):
                p = _Reader(raw_p, f"{name}-{j}")
                leader = p.opt_int("leader")
                if leader is not None:
                    leaders.add(leader)
                if p.req_int("partition") != j:
                    raise ValueError(f"{name}-{j}: partitions must be listed in order")
                try:
                    offsets = {int(k): int(v) for k, v in p.req_map("log_end_offsets").items()}
                    epochs = {int(k): int(v) for k, v in p.req_map("log_epochs").items()}
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{name}-{j}: log_end_offsets/log_epochs must map broker ids to integers"
                    ) from None
                replicas, isr = p.int_list("replicas"), p.int_list("isr")
                parts.append(Partition(j, replicas, leader, p.req_int("leader_epoch"), isr, offsets, epochs))
            state.topics[name] = Topic(name, t.req_int("replication_factor"), cfg, parts)
        for i, raw_b in enumerate(d.req_list("brokers")):
            b = _Reader(raw_b, f"brokers[{i}]")
            broker_id = b.req_int("id")
            pending = b.req_bool("alive") or broker_id in leaders
            state.brokers[broker_id] = Broker(
                broker_id,
                b.req_str("host"),
                b.req_int("port"),
                b.opt_str("rack"),
                b.req_str("incarnation"),
                alive=False,
                deadline=now + session_timeout if pending else None,
            )
        state.deleted_topics = [str(n) for n in d.req_list("deleted_topics")]
        return state


def place_replicas(brokers: Sequence[int], partitions: int, replication_factor: int, start: int) -> list[list[int]]:
    """Kafka's rack-unaware assignment with a deterministic start instead of a random one.

    Partition p's first replica (its preferred leader) is broker (start + p) mod n, so leaders of one topic differ by at
    most one per broker and successive topics start on successive brokers. Followers sit at a shift from the first
    replica that grows every n partitions, so the same pair of brokers does not carry every partition's copies.
    """
    n = len(brokers)
    if not 1 <= replication_factor <= n:
        raise ValueError("replication factor out of range")
    first_at = start % n
    shift = start % (n - 1) if n > 1 else 0
    out = []
    for p in range(partitions):
        if p > 0 and p % n == 0:
            shift += 1
        first = (first_at + p) % n
        replicas = [brokers[first]]
        for j in range(replication_factor - 1):
            # shifts 1..n-1, distinct for distinct j, so the replicas are distinct brokers
            replicas.append(brokers[(first + 1 + (shift + j) % (n - 1)) % n])
        out.append(replicas)
    return out


class _Reader:
    """Typed field access on a JSON object, failing with a message that says where."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected an object")
        self.raw = raw
        self.where = where

    def _get(self, key: str) -> Any:
        if key not in self.raw:
            raise ValueError(f"{self.where}: missing {key!r}")
        return self.raw[key]

    def req_int(self, key: str) -> int:
        v = self._get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{self.where}: {key!r} must be an integer")
        return v

    def opt_int(self, key: str) -> int | None:
        return None if self._get(key) is None else self.req_int(key)

    def req_str(self, key: str) -> str:
        v = self._get(key)
        if not isinstance(v, str):
            raise ValueError(f"{self.where}: {key!r} must be a string")
        return v

    def opt_str(self, key: str) -> str | None:
        return None if self._get(key) is None else self.req_str(key)

    def req_bool(self, key: str) -> bool:
        v = self._get(key)
        if not isinstance(v, bool):
            raise ValueError(f"{self.where}: {key!r} must be true or false")
        return v

    def req_list(self, key: str) -> list[Any]:
        v = self._get(key)
        if not isinstance(v, list):
            raise ValueError(f"{self.where}: {key!r} must be a list")
        return v

    def int_list(self, key: str) -> list[int]:
        v = self.req_list(key)
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ValueError(f"{self.where}: {key!r} must be a list of integers")
        return v

    def req_map(self, key: str) -> dict[str, Any]:
        v = self._get(key)
        if not isinstance(v, dict):
            raise ValueError(f"{self.where}: {key!r} must be an object")
        return v
