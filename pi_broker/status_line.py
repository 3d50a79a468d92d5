"""The one line a broker shows in `systemctl status pi-broker` (sd_notify STATUS=), computed from its partitions.

    broker 2: leader for 4 of 12 partitions, ISR complete
    broker 2: leader for 6 of 12 partitions, 2 under-replicated
    broker 2: leader for 0 of 12 partitions, 3 without leader, 1 failed (restart to recover)
    broker 1: standalone, 5 partitions

Pure: it reads the partitions' roles, replicas and ISRs and touches nothing, so it is tested with plain objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from pi_broker.partition import Partition, Role


class _IsrLike(Protocol):
    @property
    def isr(self) -> tuple[int, ...]: ...


class PartitionLike(Protocol):
    """The parts of pi_broker.partition.Partition the status line reads."""

    @property
    def role(self) -> Role: ...
    @property
    def replicas(self) -> tuple[int, ...]: ...
    @property
    def isr(self) -> _IsrLike | None: ...
    @property
    def failed(self) -> object | None: ...


def broker_status(broker_id: int, partitions: Iterable[PartitionLike], *, clustered: bool) -> str:
    parts = list(partitions)
    failed = sum(1 for p in parts if p.failed is not None)
    failed_text = f", {failed} failed (restart to recover)" if failed else ""
    if not clustered:
        return f"broker {broker_id}: standalone, {_plural(len(parts), 'partition')}{failed_text}"
    led = [p for p in parts if p.role is Role.LEADER]
    under = sum(1 for p in led if p.isr is not None and len(p.isr.isr) < len(p.replicas))
    leaderless = sum(1 for p in parts if p.role is Role.NONE)
    text = f"broker {broker_id}: leader for {len(led)} of {_plural(len(parts), 'partition')}"
    if led:
        text += f", {under} under-replicated" if under else ", ISR complete"
    if leaderless:
        text += f", {leaderless} without leader"
    return text + failed_text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _check_partition_fits(p: Partition) -> PartitionLike:
    return p  # mypy proves here that the real Partition satisfies the protocol
