"""PartitionLog: one partition replica's log, a directory of segments named by their base offsets.

Threading: every method runs on the event-loop thread except the static fsync(ticket), which a worker thread may run
while appends continue (group commit): flush_ticket() snapshots what needs syncing, fsync() syncs it, complete_flush()
records the result back on the loop thread.

File descriptors: the active segment holds one (read/write, O_APPEND) plus its index's append fd; a rolled segment
keeps its fd only until its data is fsynced; older segments are opened read-only on demand and kept in a small LRU,
so a broker with many partitions and segments holds few descriptors.
"""

from __future__ import annotations

import logging
import os
import shutil
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from pi_broker.log.batch_walk import BatchSpan, SegmentCorruption, span_at
from pi_broker.log.flush_ticket import FlushTicket, SyncHealth
from pi_broker.log.leader_epoch_cache import LeaderEpochCache
from pi_broker.log.recovery import CLEAN_SHUTDOWN_MARKER, recover_segments
from pi_broker.log.retention import expired_segment_count
from pi_broker.log.segment import MAX_RELATIVE_OFFSET, LogSegment
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.records import BatchHeader, check_batch, stamp
from pikafka.topic_config import TopicConfig

log = logging.getLogger("pi_broker.log")

# Read-only descriptors kept open for segments other than the active one, per partition: consumers catching up read
# one old segment after another, so a couple suffice, and 10 partitions then hold about 60 descriptors at most.
_IDLE_READERS = 4


class AppendResult(NamedTuple):
    base_offset: int
    last_offset: int


class PartitionLog:
    """One partition replica's log: <directory>/<base_offset:020d>.log and .index files."""

    def __init__(self, directory: Path, config: TopicConfig, segments: list[LogSegment], truncated: int) -> None:
        self.directory = directory
        self.config = config  # may be replaced; later rolls and retention use the new one
        self.recovered_truncated_bytes = truncated
        self._segments = segments
        self._size_bytes = sum(segment.size for segment in segments)
        self._size_at_last_ticket = self._size_bytes  # for FlushTicket.written_bytes
        self.flushed_offset = self.log_end_offset
        self._generation = 0  # bumped by truncate_to, voiding flush tickets snapshotted before it
        self._directory_changes = 0  # bumped when a segment file is created: the directory entry needs an fsync
        self._directory_synced = 0
        self._readers: OrderedDict[int, LogSegment] = OrderedDict()  # base offset -> segment, least recent first
        # Rolled-away segments whose data is not yet fsynced; they keep their fd until a flush covers them.
        self._rolled_unsynced: list[LogSegment] = []
        self._sync_health = SyncHealth()
        self._epochs: LeaderEpochCache | None = None  # loaded on first use: a rebuild reads every batch header
        self._closed = False

    @classmethod
    def open(cls, directory: Path, config: TopicConfig) -> PartitionLog:
        """Open (creating if missing) and recover the log in directory; see recovery.py for what recovery may cut."""
        directory = Path(directory)
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        recovered = recover_segments(directory, config.index_interval_bytes)
        recovered.segments[-1].open_for_append()
        if recovered.directory_changed or created:
            _fsync_directory(directory)
        if created:
            _fsync_directory(directory.parent)
        return cls(directory, config, recovered.segments, recovered.truncated_bytes)

    # ---- state ----

    @property
    def log_start_offset(self) -> int:
        """First offset still on disk (retention deletes whole segments, so always a segment's base offset)."""
        return self._segments[0].base_offset

    @property
    def log_end_offset(self) -> int:
        """The offset the next appended record gets."""
        return self._segments[-1].next_offset

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def epochs(self) -> LeaderEpochCache:
        """The leader-epoch cache of this log (see leader_epoch_cache.py)."""
        if self._epochs is None:
            self._check_open()
            self._epochs = LeaderEpochCache.load(
                self.directory,
                self.log_start_offset,
                self.log_end_offset,
                self._headers_of(list(self._segments), producers_only=False),
            )
        return self._epochs

    def _check_open(self) -> None:
        if self._closed:
            raise PikafkaError(ErrorCode.STORAGE_ERROR, f"partition log {self.directory.name} is closed")

    # ---- appending ----

    def append(self, batch: bytes, leader_epoch: int) -> AppendResult:
        """Append one batch that validate_records has passed, stamping it with the next offset and leader_epoch.
        Written, not fsynced: durability comes from the next flush."""
        self._check_open()
        unstamped = _span_of(batch)
        base_offset = self.log_end_offset
        span = BatchSpan(
            0,
            base_offset,
            unstamped.size,
            base_offset + unstamped.record_count,
            unstamped.max_timestamp,
            unstamped.record_count,
        )
        # The epoch's start is recorded before its first batch is written (see leader_epoch_cache.py).
        self.epochs.assign(leader_epoch, base_offset)
        return self._write(stamp(batch, base_offset, leader_epoch), span)

    def append_replica(self, batch: bytes) -> AppendResult:
        """Append a batch a leader already stamped (followers); it must start exactly at log_end_offset."""
        self._check_open()
        header = check_batch(batch)  # cheap next to the network hop it came over, and keeps garbage off the disk
        if header.base_offset != self.log_end_offset:
            raise ValueError(f"batch base offset {header.base_offset} is not the log end offset {self.log_end_offset}")
        span = _span_of(batch)
        self.epochs.assign(header.leader_epoch, header.base_offset)
        return self._write(bytes(batch), span)

    def _write(self, batch: bytes, span: BatchSpan) -> AppendResult:
        active = self._segments[-1]
        if active.size > 0 and (
            active.size + len(batch) > self.config.segment_bytes
            or span.next_offset - active.base_offset > MAX_RELATIVE_OFFSET
        ):
            active = self._roll()
        try:
            active.append(batch, span, self.config.index_interval_bytes, self.config.segment_bytes)
        except OSError as exc:
            raise PikafkaError(ErrorCode.STORAGE_ERROR, f"cannot append to {active.log_path}: {exc}") from exc
        self._size_bytes += len(batch)
        return AppendResult(span.base_offset, span.last_offset)

    def _roll(self) -> LogSegment:
        old = self._segments[-1]
        try:
            new = LogSegment.create(self.directory, old.next_offset)
        except OSError as exc:
            raise PikafkaError(ErrorCode.STORAGE_ERROR, f"cannot create a segment in {self.directory}: {exc}") from exc
        old.stop_appending()
        if old.synced_offset >= old.next_offset:
            old.close_fd()  # already durable; reads reopen it read-only when needed
        else:
            self._rolled_unsynced.append(old)
        self._segments.append(new)
        self._directory_changes += 1
        return new

    # ---- flushing ----

    def flush_ticket(self) -> FlushTicket:
        """Snapshot, on the loop thread, what must be fsynced for everything appended so far to be durable."""
        self._check_open()
        if self._sync_health.failed:
            raise PikafkaError(
                ErrorCode.STORAGE_ERROR, f"an fsync in {self.directory} failed; reopen the log to recover"
            )
        targets: list[tuple[LogSegment, int]] = []
        fds: list[int] = []
        directory_fd: int | None = None
        directory_changes: int | None = None
        try:
            for segment in [*self._rolled_unsynced, self._segments[-1]]:
                if segment.synced_offset >= segment.next_offset:
                    continue
                fds.append(os.dup(segment.require_fd()))
                targets.append((segment, segment.next_offset))
            if self._directory_synced < self._directory_changes:
                directory_fd = os.open(self.directory, os.O_RDONLY)
                directory_changes = self._directory_changes
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise PikafkaError(ErrorCode.STORAGE_ERROR, f"cannot prepare a flush of {self.directory}: {exc}") from exc
        # From the size the log keeps anyway, so the append path does no more work. Segments deleted to retention
        # meanwhile make this an underestimate, which only judges that round as strictly as before.
        written = max(0, self._size_bytes - self._size_at_last_ticket)
        self._size_at_last_ticket = self._size_bytes
        return FlushTicket(
            self.log_end_offset,
            self._generation,
            targets,
            directory_changes,
            self._sync_health,
            fds,
            directory_fd,
            written_bytes=written,
        )

    @staticmethod
    def fsync(ticket: FlushTicket) -> None:
        """fsync what the ticket names; may run on a worker thread. Raises OSError if the disk failed, after which
        the data cannot be assumed durable (Linux drops the dirty pages): treat the partition as failed."""
        ticket.sync()

    def complete_flush(self, ticket: FlushTicket) -> None:
        """Record, on the loop thread, that a ticket was synced: advance flushed_offset, close synced rolled fds."""
        if not ticket.synced:
            raise ValueError("complete_flush needs a ticket that fsync() synced")
        if self._closed or self._sync_health.failed or ticket.generation != self._generation:
            # Closed; or an fsync failed, after which no later one proves anything; or truncated since the snapshot,
            # so its offsets may now name batches it never synced.
            return
        for segment, next_offset in ticket.segments:
            segment.synced_offset = max(segment.synced_offset, next_offset)
        if ticket.directory_changes is not None:
            self._directory_synced = max(self._directory_synced, ticket.directory_changes)
        self.flushed_offset = max(self.flushed_offset, min(ticket.end_offset, self.log_end_offset))
        still_unsynced = []
        for segment in self._rolled_unsynced:
            if segment.synced_offset >= segment.next_offset:
                segment.close_fd()  # reads reopen it read-only when needed
            else:
                still_unsynced.append(segment)
        self._rolled_unsynced = still_unsynced

    def flush(self) -> None:
        """Synchronous flush of everything appended so far."""
        ticket = self.flush_ticket()
        try:
            self.fsync(ticket)
        except OSError as exc:
            raise PikafkaError(ErrorCode.STORAGE_ERROR, f"fsync failed in {self.directory}: {exc}") from exc
        self.complete_flush(ticket)

    # ---- reading ----

    def read(self, offset: int, max_bytes: int, max_offset: int | None = None, max_records: int | None = None) -> bytes:
        """Whole batches as stored, from the batch containing offset, each ending at or below max_offset (default:
        the log end), within max_bytes except that the first eligible batch always comes whatever its size, and
        no more once max_records records are included."""
        self._check_open()
        self._check_offset(offset)
        limit = self.log_end_offset if max_offset is None else min(max_offset, self.log_end_offset)
        if offset >= limit:
            return b""
        chunks: list[bytes] = []
        total = records = 0
        try:
            for segment in self._segments[self._segment_index(offset) :]:
                if segment.base_offset >= limit:
                    break
                self._readable(segment)
                run_start = run_end = -1
                done = False
                for span in segment.batches_from(offset):
                    if span.next_offset > limit or (total and total + span.size > max_bytes):
                        done = True
                        break
                    if run_start < 0:
                        run_start = span.position
                    run_end = span.end
                    total += span.size
                    records += span.record_count
                    if max_records is not None and records >= max_records:
                        done = True
                        break
                if run_start >= 0:
                    chunks.append(segment.read_bytes(run_start, run_end - run_start))
                if done:
                    break
        except (OSError, SegmentCorruption) as exc:
            raise self._storage_error(exc) from exc
        return b"".join(chunks)

    def read_last_batch(self, max_offset: int | None = None) -> bytes | None:
        """The last whole batch ending at or below max_offset (default: the log end), or None if there is none."""
        self._check_open()
        limit = self.log_end_offset if max_offset is None else min(max_offset, self.log_end_offset)
        target = limit - 1
        try:
            while target >= self.log_start_offset:
                segment = self._segments[self._segment_index(target)]
                self._readable(segment)
                best: BatchSpan | None = None
                straddler_base = target + 1
                for span in segment.batches_from(segment.index.floor(target)[0]):
                    if span.base_offset > target:
                        break
                    if span.next_offset > limit:
                        straddler_base = span.base_offset
                        break
                    best = span
                if best is not None:
                    return segment.read_bytes(best.position, best.size)
                # The batch holding target runs past the limit; look for the batch just before it.
                target = straddler_base - 1
        except (OSError, SegmentCorruption) as exc:
            raise self._storage_error(exc) from exc
        return None

    def recent_batch_headers(self, max_segments: int = 2, *, producers_only: bool = False) -> Iterator[BatchHeader]:
        """Headers of every batch in the newest max_segments segments, oldest first, read lazily: a full 16 MiB
        segment of small sensor batches is ~100k headers, some 30 MB as a list, which a Pi broker cannot spare.
        producers_only: only batches carrying a producer id and sequence; building a header costs ~5 us, so skipping
        the others (every /ps record is its own batch without one) saves seconds per partition at start."""
        self._check_open()
        return self._headers_of(self._segments[-max_segments:] if max_segments > 0 else [], producers_only)

    def _headers_of(self, segments: list[LogSegment], producers_only: bool) -> Iterator[BatchHeader]:
        for segment in segments:
            try:
                with segment.private_walk() as walk:
                    for span in walk:
                        if not producers_only or walk.has_producer_sequence(span):
                            yield walk.header(span)
            except (OSError, SegmentCorruption) as exc:
                raise self._storage_error(exc) from exc

    def _check_offset(self, offset: int) -> None:
        if not self.log_start_offset <= offset <= self.log_end_offset:
            raise PikafkaError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"offset {offset} outside [{self.log_start_offset}, {self.log_end_offset}]",
            )

    def _segment_index(self, offset: int) -> int:
        """Index of the segment holding offset (the last one whose base offset is at or below it)."""
        return max(bisect_right(self._segments, offset, key=lambda segment: segment.base_offset) - 1, 0)

    def _readable(self, segment: LogSegment) -> None:
        """Make sure the segment has an fd to pread; opens old segments read-only, closing the least recent one."""
        if segment.base_offset in self._readers:
            self._readers.move_to_end(segment.base_offset)
            return
        if segment.fd is not None:
            return  # the active segment, or a rolled one whose fd stays open until synced
        segment.open_for_read()
        self._readers[segment.base_offset] = segment
        if len(self._readers) > _IDLE_READERS:
            _, oldest = self._readers.popitem(last=False)
            oldest.close_fd()

    def _forget_reader(self, segment: LogSegment) -> None:
        self._readers.pop(segment.base_offset, None)

    def _storage_error(self, exc: Exception) -> PikafkaError:
        log.error("%s: read failed: %s", self.directory, exc)
        return PikafkaError(ErrorCode.STORAGE_ERROR, f"cannot read {self.directory.name}: {exc}")

    # ---- truncation, retention, lifecycle ----

    def truncate_to(self, offset: int) -> None:
        """Drop every record at or above offset, which must be a batch boundary or the log end; durable on return."""
        self._check_open()
        if not self.log_start_offset <= offset <= self.log_end_offset:
            raise ValueError(f"cannot truncate to {offset}: outside [{self.log_start_offset}, {self.log_end_offset}]")
        if offset == self.log_end_offset:
            return
        # Sync first so every segment that stays is durable: the invariant that only the newest segments hold
        # unsynced data then survives the cut, and the fsync below only has to cover the cut itself.
        self.flush()
        keep = self._segment_index(offset)
        if keep > 0 and self._segments[keep].base_offset == offset:
            keep -= 1  # cut at a segment boundary: the segment before it becomes the active one
        segment = self._segments[keep]
        try:
            self._readable(segment)
            position = segment.position_of_batch(offset)
            for removed in reversed(self._segments[keep + 1 :]):  # newest first: a crash midway leaves a prefix
                self._forget_reader(removed)
                removed.remove_files()
            del self._segments[keep + 1 :]
            self._generation += 1
            self._forget_reader(segment)
            segment.truncate_to(position, offset)
            segment.open_for_append()
            segment.fsync()
            _fsync_directory(self.directory)
        except (OSError, SegmentCorruption) as exc:
            raise PikafkaError(ErrorCode.STORAGE_ERROR, f"cannot truncate {self.directory} to {offset}: {exc}") from exc
        self._size_bytes = sum(s.size for s in self._segments)
        self.flushed_offset = min(self.flushed_offset, offset)
        self.epochs.truncate_from_end(offset)
        log.info("%s: truncated to offset %d", self.directory, offset)

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Drop every segment and continue as an empty log whose next offset is `offset` (a follower whose log ends
        before the leader's log start, or one that must discard everything); durable on return."""
        self._check_open()
        if offset < 0:
            raise ValueError(f"cannot restart the log at negative offset {offset}")
        try:
            # The cache goes first: a crash after this leaves a log with an empty cache, which load() rebuilds.
            self.epochs.clear()
            self._readers.clear()
            self._rolled_unsynced.clear()
            for removed in reversed(self._segments):  # newest first: a crash midway leaves a prefix
                removed.remove_files()
            self._segments = [LogSegment.create(self.directory, offset)]
            self._generation += 1
            self._directory_changes += 1
            _fsync_directory(self.directory)
            self._directory_synced = self._directory_changes
        except OSError as exc:
            raise PikafkaError(ErrorCode.STORAGE_ERROR, f"cannot restart {self.directory} at {offset}: {exc}") from exc
        self._size_bytes = 0
        self.flushed_offset = offset
        log.info("%s: emptied; the log now starts at offset %d", self.directory, offset)

    def apply_retention(self, now_ms: int) -> int:
        """Delete the oldest segments that retention_ms or retention_bytes no longer keeps; returns how many."""
        self._check_open()
        count = expired_segment_count(self._segments, self.config, now_ms)
        for segment in self._segments[:count]:
            self._forget_reader(segment)
            if segment in self._rolled_unsynced:
                self._rolled_unsynced.remove(segment)
            try:
                segment.remove_files()
            except OSError as exc:  # the file may linger; the log has let go of it either way
                log.warning("%s: could not delete %s: %s", self.directory, segment.log_path.name, exc)
            self._size_bytes -= segment.size
        if count:
            del self._segments[:count]
            self.flushed_offset = max(self.flushed_offset, self.log_start_offset)
            if self._epochs is not None:
                self._epochs.truncate_from_start(self.log_start_offset)
            log.info(
                "%s: retention deleted %d segment(s); log starts at %d", self.directory, count, self.log_start_offset
            )
        return count

    def close(self) -> None:
        """Flush and close every descriptor. Further calls raise STORAGE_ERROR."""
        if self._closed:
            return
        try:
            if self._sync_health.failed:
                log.error("%s: closing after a failed fsync; the next open recovers the log in full", self.directory)
                return
            self.flush()
            active = self._segments[-1]
            if active.release_reserved():
                active.fsync()  # the cut, durable before the marker below says everything on disk was synced
            if not any(segment.write_failed for segment in self._segments):
                # Only now, with everything fsynced, may the next open() skip the full check of the last segment.
                fd = os.open(self.directory / CLEAN_SHUTDOWN_MARKER, os.O_WRONLY | os.O_CREAT, 0o644)
                os.close(fd)
        finally:
            self._close_fds()

    def delete(self) -> None:
        """Close and remove the directory and everything in it (topic deletion). No flush: it is all going."""
        self._close_fds()
        shutil.rmtree(self.directory, ignore_errors=False)

    def _close_fds(self) -> None:
        self._closed = True
        self._readers.clear()
        self._rolled_unsynced.clear()
        for segment in self._segments:
            segment.close_fd()


def _span_of(batch: bytes) -> BatchSpan:
    try:
        span, _ = span_at(batch)
    except SegmentCorruption as exc:
        raise ValueError(f"not a record batch: {exc.reason}") from None
    if span.size != len(batch):
        raise ValueError(f"append takes exactly one whole batch: {len(batch)} bytes for a {span.size}-byte batch")
    return span


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
