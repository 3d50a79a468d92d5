"""IsrTracker: a partition leader's view of its followers, and the in-sync replica set (ISR) it may rely on.

Pure bookkeeping, no clock and no network: times are passed in (seconds, monotonic), and ISR changes are only proposed
here; the leader sends them to the zookeeper and reports the outcome back (`change_accepted` / `change_failed`).

Two ISRs matter, as in Kafka (KIP-497):
- the committed ISR, the one the zookeeper accepted: it decides whether acks=all may be taken (min_insync_replicas);
- the maximal ISR, the committed one plus a member being added: the high watermark waits for it. A follower is only
  proposed for the ISR once it holds everything below the high watermark, so counting it at once never holds the
  high watermark back, and if the zookeeper accepts it (and may then elect it) it already has every committed record.
  A member being removed still counts until the zookeeper accepted the removal, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

UNKNOWN_OFFSET = -1


@dataclass
class FollowerProgress:
    """What one follower's fetches (at the leader's current epoch) told the leader."""

    fetch_offset: int = UNKNOWN_OFFSET  # everything below it is durable on the follower
    caught_up_at: float = 0.0  # last time its fetch offset reached the leader's log end
    last_fetch_at: float | None = None
    leader_end_at_last_fetch: int = UNKNOWN_OFFSET


class IsrTracker:
    def __init__(self, leader_id: int, replicas: tuple[int, ...], isr: tuple[int, ...], now: float) -> None:
        self.leader_id = leader_id
        self.replicas = replicas
        self.isr: tuple[int, ...] = tuple(r for r in replicas if r in isr or r == leader_id)
        self.pending: tuple[int, ...] | None = None  # an ISR sent to the zookeeper, not answered yet
        # Members get a full lag period from the moment this broker leads: they have not had a chance to fetch yet.
        self.followers = {r: FollowerProgress(caught_up_at=now) for r in replicas if r != leader_id}

    # ---- follower fetches ----

    def record_fetch(self, replica: int, fetch_offset: int, leader_end: int, now: float) -> None:
        """A follower fetched from `fetch_offset` while the leader's log ended at `leader_end` (Kafka's rule: caught
        up if it reached the log end now, or reached what the log end was at its previous fetch)."""
        progress = self.followers.get(replica)
        if progress is None:
            return
        if fetch_offset >= leader_end:
            progress.caught_up_at = now
        elif progress.last_fetch_at is not None and fetch_offset >= progress.leader_end_at_last_fetch:
            progress.caught_up_at = max(progress.caught_up_at, progress.last_fetch_at)
        progress.fetch_offset = fetch_offset
        progress.last_fetch_at = now
        progress.leader_end_at_last_fetch = leader_end

    def fetch_offset_of(self, replica: int) -> int:
        progress = self.followers.get(replica)
        return UNKNOWN_OFFSET if progress is None else progress.fetch_offset

    # ---- the high watermark ----

    @property
    def maximal_isr(self) -> tuple[int, ...]:
        if self.pending is None:
            return self.isr
        return tuple(r for r in self.replicas if r in self.isr or r in self.pending)

    def replicated_bound(self) -> int | None:
        """The smallest fetch offset over the followers of the maximal ISR (UNKNOWN_OFFSET if one has not fetched
        yet), or None when the leader is the ISR's only member."""
        offsets = [self.fetch_offset_of(r) for r in self.maximal_isr if r != self.leader_id]
        return min(offsets) if offsets else None

    # ---- proposing changes ----

    def shrink_proposal(self, now: float, lag_max_s: float) -> tuple[int, ...] | None:
        """The ISR without members that have not caught up for lag_max_s, or None (no change, or one is pending)."""
        if self.pending is not None:
            return None
        lagging = {r for r in self.isr if r != self.leader_id and now - self.followers[r].caught_up_at > lag_max_s}
        if not lagging:
            return None
        return tuple(r for r in self.isr if r not in lagging)

    def expand_proposal(self, replica: int, high_watermark: int, epoch_start: int) -> tuple[int, ...] | None:
        """The ISR plus `replica` if it now holds everything below the high watermark and has reached this leader's
        epoch (so its log is known to agree with ours), else None."""
        if self.pending is not None or replica in self.isr or replica not in self.followers:
            return None
        offset = self.followers[replica].fetch_offset
        if offset < high_watermark or offset < epoch_start:
            return None
        return tuple(r for r in self.replicas if r in self.isr or r == replica)

    def begin_change(self, proposed: tuple[int, ...]) -> None:
        self.pending = proposed

    def change_failed(self) -> None:
        self.pending = None

    def adopt(self, isr: tuple[int, ...], now: float) -> None:
        """Take the ISR the zookeeper holds (its answer, or a snapshot: it drops dead followers on its own)."""
        joined = [r for r in isr if r not in self.isr and r in self.followers]
        self.isr = tuple(r for r in self.replicas if r in isr or r == self.leader_id)
        for r in joined:
            # A new member starts its lag period now, not from whenever it last caught up.
            self.followers[r].caught_up_at = max(self.followers[r].caught_up_at, now)
