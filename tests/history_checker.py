"""The history checker the fault tests share: acknowledged writes against consumed records.

A write is identified by its value (tests make every value unique). The checker reports
- lost: acknowledged values never consumed,
- duplicated: values consumed more than once (at distinct offsets: the same record re-read is not a duplicate),
- reordered: within one partition, consumed records whose write order (per producer, by its sequence number
  carried in the value) goes backwards,
and is plain data so a failing test can print exactly what went wrong.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ack:
    value: bytes
    partition: int
    offset: int


@dataclass(frozen=True)
class Consumed:
    value: bytes
    partition: int
    offset: int


@dataclass
class Verdict:
    lost: list[bytes] = field(default_factory=list)
    duplicated: list[bytes] = field(default_factory=list)
    reordered: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) where order went back
    moved: list[bytes] = field(default_factory=list)  # acknowledged at one offset, read at another

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.moved)

    def summary(self) -> str:
        return (
            f"lost={len(self.lost)} duplicated={len(self.duplicated)} reordered={len(self.reordered)} "
            f"moved={len(self.moved)}; first lost {self.lost[:5]!r}, first duplicated {self.duplicated[:5]!r}, "
            f"first reordered {self.reordered[:5]!r}, first moved {self.moved[:5]!r}"
        )


def check(acks: list[Ack], consumed: list[Consumed], order_key: dict[bytes, tuple[str, int]] | None = None) -> Verdict:
    """order_key maps a value to (writer, sequence) so per-writer order within a partition can be checked."""
    verdict = Verdict()
    offsets_by_value: dict[bytes, set[tuple[int, int]]] = defaultdict(set)
    for rec in consumed:
        offsets_by_value[rec.value].add((rec.partition, rec.offset))
    for value, places in offsets_by_value.items():
        if len(places) > 1:
            verdict.duplicated.append(value)
    for ack in acks:
        read_at = offsets_by_value.get(ack.value)
        if not read_at:
            verdict.lost.append(ack.value)
        elif ack.offset >= 0 and (ack.partition, ack.offset) not in read_at:
            # An offset, once acknowledged, names the same record forever.
            verdict.moved.append(ack.value)
    if order_key:
        by_partition: dict[int, list[Consumed]] = defaultdict(list)
        for rec in consumed:
            by_partition[rec.partition].append(rec)
        for partition, recs in by_partition.items():
            recs.sort(key=lambda r: r.offset)
            last_seq: dict[str, int] = {}
            for rec in recs:
                if rec.value not in order_key:
                    continue
                writer, seq = order_key[rec.value]
                if seq < last_seq.get(writer, -1):
                    verdict.reordered.append((partition, rec.offset))
                last_seq[writer] = max(seq, last_seq.get(writer, -1))
    return verdict
