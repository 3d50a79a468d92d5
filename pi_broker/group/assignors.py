"""Partition assignment strategies as pure functions: members and their subscriptions in, partitions per member out.

Both give every partition of a subscribed topic to exactly one member subscribed to it, and are deterministic (members
are sorted by id), so the coordinator computes the same assignment from the same membership.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

TopicPartitionId = tuple[str, int]
Assignment = dict[str, list[TopicPartitionId]]
Assignor = Callable[[Mapping[str, Sequence[str]], Mapping[str, int]], Assignment]


def range_assign(subscriptions: Mapping[str, Sequence[str]], partition_counts: Mapping[str, int]) -> Assignment:
    """Kafka's RangeAssignor: per topic, contiguous ranges of partitions to the members subscribed to it in id
    order; the first `count % members` members get one more. Balanced within 1 per topic."""
    out: Assignment = {member: [] for member in subscriptions}
    for topic in sorted({t for topics in subscriptions.values() for t in topics}):
        count = partition_counts.get(topic, 0)
        members = sorted(m for m, topics in subscriptions.items() if topic in topics)
        if not members:
            continue
        share, extra = divmod(count, len(members))
        start = 0
        for i, member in enumerate(members):
            size = share + (1 if i < extra else 0)
            out[member].extend((topic, p) for p in range(start, start + size))
            start += size
    return out


def round_robin_assign(subscriptions: Mapping[str, Sequence[str]], partition_counts: Mapping[str, int]) -> Assignment:
    """Kafka's RoundRobinAssignor: every partition of every subscribed topic, in (topic, partition) order, dealt to
    the next member (in id order) subscribed to its topic. Balanced within 1 overall when every member subscribes
    to the same topics."""
    out: Assignment = {member: [] for member in subscriptions}
    members = sorted(subscriptions)
    if not members:
        return out
    turn = 0
    for topic in sorted({t for topics in subscriptions.values() for t in topics}):
        for partition in range(partition_counts.get(topic, 0)):
            for _ in range(len(members)):
                member = members[turn % len(members)]
                turn += 1
                if topic in subscriptions[member]:
                    out[member].append((topic, partition))
                    break
    return out


ASSIGNORS: dict[str, Assignor] = {"range": range_assign, "roundrobin": round_robin_assign}


def choose_strategy(preferences: Sequence[Sequence[str]]) -> str | None:
    """The first strategy of the first member's preference list that every member supports (None: no common one)."""
    if not preferences:
        return None
    common = set(preferences[0]).intersection(*map(set, preferences[1:]))
    for name in preferences[0]:
        if name in common and name in ASSIGNORS:
            return name
    return None
