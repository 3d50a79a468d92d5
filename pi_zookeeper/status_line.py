"""The one line the zookeeper shows in `systemctl status pi-zookeeper` (sd_notify STATUS=), from its ClusterState.

    3 of 3 brokers alive, 12 partitions, 0 offline
    2 of 3 brokers alive, 12 partitions, 0 offline, 4 under-replicated

A partition is offline when it has no leader (no live in-sync replica), under-replicated when its ISR is smaller
than its replica list. Pure: reads the state, changes nothing.
"""

from __future__ import annotations

from pi_zookeeper.state import ClusterState


def zookeeper_status(state: ClusterState) -> str:
    alive = sum(1 for b in state.brokers.values() if b.alive)
    partitions = [p for t in state.topics.values() for p in t.partitions]
    offline = sum(1 for p in partitions if p.leader is None)
    under = sum(1 for p in partitions if p.leader is not None and len(p.isr) < len(p.replicas))
    text = (
        f"{alive} of {len(state.brokers)} broker{'' if len(state.brokers) == 1 else 's'} alive, "
        f"{len(partitions)} partition{'' if len(partitions) == 1 else 's'}, {offline} offline"
    )
    return text + (f", {under} under-replicated" if under else "")
