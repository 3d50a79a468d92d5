"""LeaderEpochCache: at which offset each leader epoch's batches start in one partition replica's log.

Kafka's leader-epoch fencing rests on this table. A follower that (re)starts following asks the leader "where does my
latest epoch end in your log?" and cuts its own log there, so whatever a deposed leader appended after the new leader
took over (never acknowledged with acks=all) is removed before the follower fetches again. Offsets alone cannot tell
this: two replicas may hold different batches at the same offsets.

The table lives in `<partition dir>/leader-epoch-checkpoint` (JSON, replaced atomically). It is written BEFORE the first
batch of a new epoch is appended, so after a crash it may name an epoch whose batches never reached the disk; `load`
drops entries starting beyond the recovered log end. A log without a usable table (written before this file existed,
or a crash between a full truncation and the rewrite) is rebuilt from the batch headers, which carry their epochs.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pikafka.atomic_file import read_json, write_json_atomic
from pikafka.records import BatchHeader

log = logging.getLogger("pi_broker.log")

CHECKPOINT_FILE = "leader-epoch-checkpoint"
UNDEFINED_EPOCH = -1
_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class EpochEntry:
    epoch: int
    start_offset: int


@dataclass(frozen=True, slots=True)
class EpochEnd:
    """The answer to "where does epoch E end": the largest epoch <= E this log knows, and the offset after its last
    record (the start of the next epoch, or the log end for the latest one). UNDEFINED_EPOCH when nothing is known."""

    epoch: int
    end_offset: int


class LeaderEpochCache:
    def __init__(self, path: Path, entries: list[EpochEntry]) -> None:
        self.path = path
        self._entries = entries  # strictly increasing in epoch and non-decreasing in start offset

    @classmethod
    def load(cls, directory: Path, log_start: int, log_end: int, headers: Iterable[BatchHeader]) -> LeaderEpochCache:
        """Read the checkpoint (or rebuild it from `headers`, consumed only when needed) and make it agree with a log
        holding [log_start, log_end)."""
        path = directory / CHECKPOINT_FILE
        entries: list[EpochEntry] | None = None
        try:
            document = read_json(path)
            raw = document["epochs"] if isinstance(document, dict) else None
            if isinstance(raw, list):
                entries = [EpochEntry(int(e), int(s)) for e, s in raw]
        except FileNotFoundError:
            entries = None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("%s: unreadable (%s); rebuilding it from the log", path, exc)
            entries = None
        cache = cls(path, entries or [])
        if (entries is None or not entries) and log_end > log_start:
            cache._entries = _entries_from_headers(headers)
            cache._save()
        elif cache._cut_beyond(log_end):
            cache._save()
        return cache

    # ---- reading ----

    @property
    def entries(self) -> list[EpochEntry]:
        return list(self._entries)

    @property
    def latest_epoch(self) -> int:
        return self._entries[-1].epoch if self._entries else UNDEFINED_EPOCH

    def start_offset_of(self, epoch: int) -> int | None:
        for entry in self._entries:
            if entry.epoch == epoch:
                return entry.start_offset
        return None

    def end_offset_for(self, epoch: int, log_end: int) -> EpochEnd:
        """Kafka's OffsetsForLeaderEpoch rule (see EpochEnd)."""
        if not self._entries or epoch == UNDEFINED_EPOCH:
            return EpochEnd(UNDEFINED_EPOCH, UNDEFINED_EPOCH)
        if epoch >= self._entries[-1].epoch:
            # A requester with an epoch newer than ours learns our latest; it decides what that means.
            return EpochEnd(self._entries[-1].epoch, log_end)
        epochs = [e.epoch for e in self._entries]
        higher = bisect_right(epochs, epoch)  # first entry with a larger epoch (exists: epoch < latest)
        end = self._entries[higher].start_offset
        if higher == 0:
            # Older than anything we know: everything before our first epoch is all the requester may keep.
            return EpochEnd(epoch, end)
        return EpochEnd(self._entries[higher - 1].epoch, end)

    # ---- changing ----

    def assign(self, epoch: int, start_offset: int) -> None:
        """Epoch `epoch` starts at `start_offset` (a leader taking over, or a follower appending the first batch of a
        newer epoch). Older or equal epochs change nothing."""
        if epoch < 0 or (self._entries and epoch <= self._entries[-1].epoch):
            return
        if self._entries and start_offset < self._entries[-1].start_offset:
            # Cannot happen with a sane log; keeping the table monotonic matters more than this entry.
            log.warning("%s: epoch %d starts at %d, before the previous epoch", self.path, epoch, start_offset)
            return
        self._entries.append(EpochEntry(epoch, start_offset))
        self._save()

    def truncate_from_end(self, log_end: int) -> None:
        """After the log was cut to `log_end`: forget epochs that started at or after it."""
        kept = [e for e in self._entries if e.start_offset < log_end]
        if kept != self._entries:
            self._entries = kept
            self._save()

    def truncate_from_start(self, log_start: int) -> None:
        """After retention moved the log start: epochs wholly before it go, the one holding it starts there."""
        kept: list[EpochEntry] = []
        for i, entry in enumerate(self._entries):
            following = self._entries[i + 1].start_offset if i + 1 < len(self._entries) else None
            if following is not None and following <= log_start:
                continue
            kept.append(EpochEntry(entry.epoch, max(entry.start_offset, log_start)))
        if kept != self._entries:
            self._entries = kept
            self._save()

    def clear(self) -> None:
        self._entries = []
        self._save()

    def _cut_beyond(self, log_end: int) -> bool:
        kept = [e for e in self._entries if e.start_offset <= log_end]
        changed = kept != self._entries
        self._entries = kept
        return changed

    def _save(self) -> None:
        write_json_atomic(
            self.path, {"version": _FORMAT_VERSION, "epochs": [[e.epoch, e.start_offset] for e in self._entries]}
        )


def _entries_from_headers(headers: Iterable[BatchHeader]) -> list[EpochEntry]:
    entries: list[EpochEntry] = []
    for header in headers:
        if header.leader_epoch >= 0 and (not entries or header.leader_epoch > entries[-1].epoch):
            entries.append(EpochEntry(header.leader_epoch, header.base_offset))
    return entries
