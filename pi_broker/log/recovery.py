"""Recovery at open: turn what a crash left in a partition directory into a dense prefix of whole, CRC-valid batches.

The policy, and why:

- The last segment is where appends were going, so a crash can leave a torn batch, or pages of it written out of order,
  at its tail: every batch of it is CRC-checked and the log is cut before the first bad one (a warning with the byte
  count). Everything fsynced lies before the tear, so nothing acknowledged as durable is lost. After a clean shutdown
  (see CLEAN_SHUTDOWN_MARKER) it gets the older segments' cheap check instead.
- An older segment gets a cheap check: its index file must be consistent and the batches after its last index entry
  must be CRC-valid and dense up to exactly the end of the file (torn writes only ever hit a file's tail, and a rolled
  segment may still have had an unflushed tail when the power went). If that fails it is CRC-checked in full.
- A bad batch in an older segment cuts that segment there and deletes every later segment, logged as an error, as Kafka
  does after the first corruption. Offsets must stay dense: keeping later segments would leave a hole that consumers
  and followers would silently skip, and later batches cannot be renumbered. What is lost is, at worst, data never
  fsynced (a flush fsyncs every dirty segment before it counts, so a torn older segment means the later ones were not
  synced either) or, with bit rot, data a replica can fetch again from the leader. A gap or overlap between segments
  is treated the same way.
- Zeros after the last batch of a segment are the space reserved for its appends (segment.py), left by a crash, or by
  one between a roll and the sync that made the rolled segment's cut durable. They are dropped (an info line, not
  counted as truncated) and, in an older segment, do not end the log: whether the next segment continues exactly
  where the batches stop is checked as for any other pair, and a tear hidden under the zeros shows up there.
- An empty older segment means its batches never reached the disk: it ends the log like any other gap, so it stays
  (as the new, empty active segment) and the later segments go. Removing it instead would keep later batches after a
  hole, and the log would no longer be a prefix of what was appended.
- An .index without its .log is a cache of nothing and is removed. Files with other names are left alone (with a
  warning): nothing here deletes what it does not understand.
- Unless the shutdown was clean, every remaining segment is fsynced: after a process crash the page cache may still hold
  writes that never reached the disk, and the reopened log promises flushed_offset == log_end_offset.
- Not looked at, to keep a start cheap: the middle of an older segment whose index and tail check out (bit rot there
  reaches consumers, whose CRC check rejects the batch, as in Kafka), and leader_epoch fields, which lie outside the
  CRC and follow no rule that density could check.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pi_broker.log.leader_epoch_cache import CHECKPOINT_FILE
from pi_broker.log.segment import INDEX_SUFFIX, LOG_SUFFIX, LogSegment, segment_path

log = logging.getLogger("pi_broker.log")

_NAME_DIGITS = 20
# Written by PartitionLog.close() after its final fsync, removed (durably) by open() before anything is appended: its
# presence proves every byte on disk was fsynced, so open() can skip the full CRC check of the last segment, which on
# a Pi takes seconds per partition. Kafka's .kafka_cleanshutdown does the same.
CLEAN_SHUTDOWN_MARKER = "clean-shutdown"


@dataclass
class RecoveredSegments:
    segments: list[LogSegment]  # dense, oldest first; only the last has an open fd
    truncated_bytes: int  # bytes cut off torn or corrupt tails, plus bytes of segments deleted after a corruption
    directory_changed: bool  # files were created or removed: the directory needs an fsync


def recover_segments(directory: Path, index_interval: int) -> RecoveredSegments:
    marker = directory / CLEAN_SHUTDOWN_MARKER
    clean = marker.is_file()
    bases, changed = _segment_bases(directory)
    segments: list[LogSegment] = []
    truncated = 0
    last_fully_checked = ended_early = False
    for i, base in enumerate(bases):
        is_last = i == len(bases) - 1
        if segments and segments[-1].next_offset != base:
            log.error(
                "%s: segment %d does not continue the log, which ends at offset %d; deleting it and every later one",
                directory,
                base,
                segments[-1].next_offset,
            )
            truncated += _delete_segments(directory, bases[i:])
            changed = ended_early = True
            break
        segment = LogSegment.open_existing(directory, base)
        # After a clean shutdown the last segment was fsynced whole like the others: the cheap check suffices.
        last_fully_checked = (is_last and not clean) or not segment.check_tail_against_index(index_interval)
        if last_fully_checked:
            corruption = segment.recover(index_interval)
            if corruption is not None and not _drop_reserved_tail(segment):
                cut = segment.cut_tail()
                truncated += cut
                if is_last:
                    log.warning("%s: cut %d bytes of torn or corrupt tail (%s)", segment.log_path, cut, corruption)
                else:
                    log.error("%s: cut %d corrupt bytes (%s)", segment.log_path, cut, corruption)
                    segments.append(segment)
                    truncated += _delete_segments(directory, bases[i + 1 :])
                    changed = ended_early = True
                    break
        segments.append(segment)
        if not is_last:
            if not clean:
                segment.fsync()
            segment.close_fd()

    if not segments:
        segments.append(LogSegment.create(directory, 0))
        changed = True
    last = segments[-1]
    last.open_for_read()
    if ended_early and not last_fully_checked:
        # The log now ends in a segment only tail-checked (later ones were deleted): give it the last segment's check.
        corruption = last.recover(index_interval)
        if corruption is not None and not _drop_reserved_tail(last):
            cut = last.cut_tail()
            truncated += cut
            log.error("%s: cut %d corrupt bytes (%s)", last.log_path, cut, corruption)
    if not clean:
        last.fsync()
    for segment in segments:
        segment.synced_offset = segment.next_offset  # fsynced above, or before the clean shutdown
    if clean:
        # Gone before the first append (the caller fsyncs the directory): a crash from here on needs the full check.
        marker.unlink()
        changed = True
    return RecoveredSegments(segments, truncated, changed)


def _drop_reserved_tail(segment: LogSegment) -> bool:
    """Cut the file after the segment's valid batches if nothing but zeros follows them; True if it did."""
    if not segment.tail_is_zeros():
        return False
    cut = segment.cut_tail()
    log.info("%s: dropped %d bytes of space reserved after the last batch", segment.log_path, cut)
    return True


def _segment_bases(directory: Path) -> tuple[list[int], bool]:
    """Base offsets of the .log files, sorted; removes .index files that have no .log (reports whether it did)."""
    log_bases: set[int] = set()
    index_bases: set[int] = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name == CLEAN_SHUTDOWN_MARKER or entry.name == CHECKPOINT_FILE:
                continue
            if entry.name.startswith(f".{CHECKPOINT_FILE}."):
                # A temporary file of an atomic replace a crash interrupted: ours, and never read.
                os.unlink(entry.path)
                continue
            stem, _, suffix = entry.name.partition(".")
            suffix = "." + suffix
            if (
                suffix in (LOG_SUFFIX, INDEX_SUFFIX)
                and len(stem) == _NAME_DIGITS
                and stem.isascii()
                and stem.isdigit()
                and entry.is_file(follow_symlinks=False)
            ):
                (log_bases if suffix == LOG_SUFFIX else index_bases).add(int(stem))
            else:
                log.warning("%s: ignoring unexpected entry %r", directory, entry.name)
    strays = index_bases - log_bases
    for base in strays:
        segment_path(directory, base, INDEX_SUFFIX).unlink(missing_ok=True)
    return sorted(log_bases), bool(strays)


def _delete_segments(directory: Path, bases: list[int]) -> int:
    """Delete segments newest first (a crash midway leaves a prefix); returns the bytes of log they held."""
    total = 0
    for base in reversed(bases):
        segment = LogSegment(directory, base, 0)
        try:
            size = segment.log_path.stat().st_size
        except FileNotFoundError:
            size = 0
        log.error("%s: deleting segment %s (%d bytes) after a corruption before it", directory, segment.log_path, size)
        segment.remove_files()
        total += size
    return total
