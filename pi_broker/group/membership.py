"""One consumer group's membership as a pure state machine: every call takes `now` (seconds, any monotonic clock);
no sockets, no asyncio, so the unit tests drive it with a fake clock.

Eager rebalancing, as Kafka's classic protocol but with one round trip: a join (new member, or a member told to
rejoin) puts the group into PREPARING_REBALANCE; the rebalance completes when every member has rejoined, or at the
rebalance deadline (members that did not rejoin are dropped), or when the members that did not rejoin expire. Then
the generation increases and the coordinator's chosen strategy assigns the partitions; each join is answered with
its member's share. Members that have not rejoined still own their partitions of the old generation until they do
(they may commit them), and nobody gets a partition before its previous owner rejoined or was dropped, so no two
members own a partition in the same generation. Commits must name the current generation and partitions the
member owns in it (ILLEGAL_GENERATION otherwise).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from pi_broker.group.assignors import ASSIGNORS, TopicPartitionId, choose_strategy
from pikafka.errors import ErrorCode, PikafkaError


class GroupState(Enum):
    EMPTY = "empty"
    PREPARING_REBALANCE = "preparing_rebalance"
    STABLE = "stable"


@dataclass
class Member:
    member_id: str
    client_id: str
    topics: tuple[str, ...]
    strategies: tuple[str, ...]
    session_timeout_s: float
    rebalance_timeout_s: float
    last_seen: float
    rejoined: bool = True  # has joined during the rebalance under way (meaningless when STABLE)
    assignment: list[TopicPartitionId] = field(default_factory=list)
    answer: JoinResult | None = None  # the completed rebalance's answer to this member's latest join


@dataclass(frozen=True)
class JoinResult:
    member_id: str
    generation: int
    strategy: str
    assignment: list[TopicPartitionId]
    members: list[str]


_member_counter = itertools.count(1)


class GroupMembership:
    def __init__(self, group_id: str, *, first_generation: int = 0, initial_delay_s: float = 0.0) -> None:
        self.group_id = group_id
        self.state = GroupState.EMPTY
        # Restarts after the highest generation seen in committed offsets (a new coordinator's first generation is
        # then newer than anything a member of the old coordinator holds).
        self.generation = first_generation
        self.strategy: str | None = None
        self.members: dict[str, Member] = {}
        self.rebalance_deadline: float | None = None
        # A coordinator that just took the group over waits this long in its first rebalance for the members of the
        # old coordinator to arrive, so the first one to rejoin does not take every partition alone.
        self._initial_delay_s = initial_delay_s
        self._earliest_completion: float | None = None

    # -- requests ----------------------------------------------------------------------------------------------

    def join(
        self,
        member_id: str,
        client_id: str,
        topics: Sequence[str],
        strategies: Sequence[str],
        session_timeout_s: float,
        rebalance_timeout_s: float,
        now: float,
    ) -> str:
        """Add or refresh a member and make sure a rebalance is under way; returns the member id (a new one when
        `member_id` is empty). An unknown non-empty id is accepted as given: the member may come from a
        coordinator that has since failed over."""
        self.tick(now)
        if not topics:
            raise PikafkaError(ErrorCode.INVALID_REQUEST, "a member must subscribe to at least one topic")
        if not any(s in ASSIGNORS for s in strategies):
            raise PikafkaError(
                ErrorCode.INVALID_REQUEST, f"no supported strategy in {list(strategies)}; use {sorted(ASSIGNORS)}"
            )
        others = [m.strategies for m in self.members.values() if m.member_id != member_id]
        if others and choose_strategy([tuple(strategies), *others]) is None:
            raise PikafkaError(
                ErrorCode.INVALID_REQUEST, f"strategies {list(strategies)} share none with the group's members"
            )
        if not member_id:
            member_id = f"{client_id or 'member'}-{next(_member_counter)}-{secrets.token_hex(4)}"
        member = self.members.get(member_id)
        if member is None:
            member = Member(member_id, client_id, (), (), session_timeout_s, rebalance_timeout_s, now)
            self.members[member_id] = member
        member.client_id = client_id
        member.topics = tuple(dict.fromkeys(topics))
        member.strategies = tuple(strategies)
        member.session_timeout_s = session_timeout_s
        member.rebalance_timeout_s = rebalance_timeout_s
        member.last_seen = now
        member.answer = None
        if self.state is not GroupState.PREPARING_REBALANCE:
            self._prepare_rebalance(now)
        member.rejoined = True
        return member_id

    def heartbeat(self, member_id: str, generation: int, now: float) -> None:
        """Raises UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION or REBALANCE_IN_PROGRESS (all: join again)."""
        self.tick(now)
        member = self._member(member_id)
        member.last_seen = now
        if self.state is GroupState.PREPARING_REBALANCE:
            raise PikafkaError(ErrorCode.REBALANCE_IN_PROGRESS, f"group {self.group_id!r} is rebalancing; rejoin")
        self._check_generation(generation)

    def leave(self, member_id: str, now: float) -> None:
        self.tick(now)
        self._member(member_id)
        del self.members[member_id]
        self._after_removal(now)

    def check_commit(self, member_id: str, generation: int, partitions: Sequence[TopicPartitionId], now: float) -> None:
        """May this member commit offsets of these partitions? A member may commit what it owns in the current
        generation, also while a rebalance is under way (eager members commit before they rejoin). An empty member
        id with generation -1 is an administrative commit, allowed only while the group has no members."""
        self.tick(now)
        if not member_id and generation < 0:
            if self.members:
                raise PikafkaError(
                    ErrorCode.NON_EMPTY_GROUP,
                    f"group {self.group_id!r} has {len(self.members)} live member(s); stop them first",
                )
            return
        member = self._member(member_id)
        member.last_seen = now
        self._check_generation(generation)
        if self.state is GroupState.PREPARING_REBALANCE and member.rejoined:
            # Rejoining revoked its partitions; anything it commits now comes from the past.
            raise PikafkaError(ErrorCode.REBALANCE_IN_PROGRESS, f"member {member_id!r} already rejoined")
        owned = set(member.assignment)
        for tp in partitions:
            if tp not in owned:
                raise PikafkaError(
                    ErrorCode.ILLEGAL_GENERATION,
                    f"member {member_id!r} does not own {tp[0]}-{tp[1]} in generation {self.generation}",
                )

    def join_result(self, member_id: str) -> JoinResult | None:
        """The member's share once the rebalance it joined completed; None while it is still under way. Kept after
        a newer rebalance started, so a member that was slow to pick its answer up still gets it (and learns of the
        newer one from its next heartbeat)."""
        return self._member(member_id).answer

    # -- time --------------------------------------------------------------------------------------------------

    def tick(self, now: float, partition_counts: Mapping[str, int] | None = None) -> bool:
        """Expire silent members and complete a due rebalance (when `partition_counts` is given: the assignment
        needs them). True when something changed."""
        changed = False
        for member in list(self.members.values()):
            waiting_in_join = self.state is GroupState.PREPARING_REBALANCE and member.rejoined
            if not waiting_in_join and now - member.last_seen > member.session_timeout_s:
                del self.members[member.member_id]
                changed = True
        if changed:
            self._after_removal(now)
        if self.state is GroupState.PREPARING_REBALANCE and partition_counts is not None and self._rebalance_due(now):
            self._complete_rebalance(partition_counts, now)
            changed = True
        return changed

    def next_deadline(self) -> float | None:
        """When `tick` may next change something without a request arriving."""
        times = [m.last_seen + m.session_timeout_s for m in self.members.values()]
        if self.rebalance_deadline is not None:
            times.append(self.rebalance_deadline)
        if self._earliest_completion is not None:
            times.append(self._earliest_completion)
        return min(times) if times else None

    def subscribed_topics(self) -> set[str]:
        return {t for m in self.members.values() for t in m.topics}

    # -- internals ---------------------------------------------------------------------------------------------

    def _member(self, member_id: str) -> Member:
        member = self.members.get(member_id)
        if member is None:
            raise PikafkaError(
                ErrorCode.UNKNOWN_MEMBER_ID, f"group {self.group_id!r} has no member {member_id[:80]!r}; join again"
            )
        return member

    def _check_generation(self, generation: int) -> None:
        if generation != self.generation or self.state is GroupState.EMPTY:
            raise PikafkaError(
                ErrorCode.ILLEGAL_GENERATION,
                f"generation {generation} is not group {self.group_id!r}'s current {self.generation}; join again",
            )

    def _prepare_rebalance(self, now: float) -> None:
        self.state = GroupState.PREPARING_REBALANCE
        for member in self.members.values():
            member.rejoined = False
        timeout = max((m.rebalance_timeout_s for m in self.members.values()), default=0.0)
        self.rebalance_deadline = now + timeout
        if self._initial_delay_s > 0:
            self._earliest_completion = now + self._initial_delay_s
            self._initial_delay_s = 0.0

    def _after_removal(self, now: float) -> None:
        if not self.members:
            self.state = GroupState.EMPTY
            self.rebalance_deadline = None
            self._earliest_completion = None  # the generation is kept: a later first member continues the count
        elif self.state is GroupState.STABLE:
            self._prepare_rebalance(now)

    def _rebalance_due(self, now: float) -> bool:
        if not self.members:
            return False
        if self._earliest_completion is not None and now < self._earliest_completion:
            return False
        everyone = all(m.rejoined for m in self.members.values())
        return everyone or (self.rebalance_deadline is not None and now >= self.rebalance_deadline)

    def _complete_rebalance(self, partition_counts: Mapping[str, int], now: float) -> None:
        for member in list(self.members.values()):
            if not member.rejoined:
                del self.members[member.member_id]  # missed the rebalance deadline
        if not self.members:
            self._after_removal(now)
            return
        ordered = sorted(self.members.values(), key=lambda m: m.member_id)
        strategy = choose_strategy([m.strategies for m in ordered])
        assert strategy is not None  # join() refuses members sharing no strategy
        shares = ASSIGNORS[strategy]({m.member_id: m.topics for m in ordered}, partition_counts)
        self.generation += 1
        self.strategy = strategy
        self.state = GroupState.STABLE
        self.rebalance_deadline = None
        self._earliest_completion = None
        names = [m.member_id for m in ordered]
        for member in ordered:
            member.assignment = shares.get(member.member_id, [])
            member.last_seen = now  # the session restarts with the answer to its join
            member.answer = JoinResult(member.member_id, self.generation, strategy, list(member.assignment), names)
