"""One segment of a partition log: <base_offset:020d>.log holding consecutive whole batches, and its .index.

A segment knows its bytes, its offsets and its sparse index; it does not decide when to roll, fsync or delete (that is
PartitionLog's job) and keeps at most one file descriptor, which PartitionLog opens and closes to bound how many a
broker holds.

While a segment takes appends, its file reaches up to RESERVE_BYTES past its last batch, reserved with fallocate and
reading as zeros (preallocation.py says why: an fdatasync with no file size to commit). The file is cut back to its
batches when the segment rolls and when the log closes; after a crash, recovery finds the zeros after the last batch
and drops them like any other tail that is no batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pi_broker.log.batch_walk import BatchSpan, BatchWalk, SegmentCorruption, walk_batches
from pi_broker.log.offset_index import OffsetIndex
from pi_broker.log.preallocation import reserve

log = logging.getLogger("pi_broker.log")

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
NO_TIMESTAMP = -1
# Index entries hold offsets relative to the segment's base as uint32; a segment rolls before outgrowing that.
MAX_RELATIVE_OFFSET = 0xFFFFFFFF
# Space reserved at a time ahead of the appends (never past the segment's roll size). Each reservation changes the
# file's size, which the next fsync commits to the journal: once per MiB instead of once per sync.
RESERVE_BYTES = 1024 * 1024
_ZERO_CHECK_CHUNK = 64 * 1024


def segment_path(directory: Path, base_offset: int, suffix: str) -> Path:
    return directory / f"{base_offset:020d}{suffix}"


class LogSegment:
    def __init__(self, directory: Path, base_offset: int, size: int) -> None:
        self.base_offset = base_offset
        self.log_path = segment_path(directory, base_offset, LOG_SUFFIX)
        self.index = OffsetIndex(segment_path(directory, base_offset, INDEX_SUFFIX), base_offset)
        self.size = size  # bytes of whole, valid batches (the file is cut to this at recovery)
        self.file_size = size  # the file's length: past `size` by the space reserved for appends, which reads as zeros
        self._reserving = True  # False once the filesystem refused a reservation: the file then grows with its appends
        self.next_offset = base_offset  # offset after the last batch
        # Greatest record timestamp seen, for time retention. Exact for batches appended or CRC-scanned since open; for
        # a segment only tail-checked at open (or truncated) it is the greatest among the batches after its last index
        # entry, which equals the exact value whenever timestamps grow with offsets, as sensor clocks make them.
        self.max_timestamp = NO_TIMESTAMP
        self.synced_offset = base_offset  # every batch below this offset has been fsynced
        self.fd: int | None = None
        self.appendable = False
        self._bytes_since_index_entry = 0
        # Set when a failed append could not be rolled back: appending more would bury a torn batch mid-segment,
        # where recovery would cut everything after it, acknowledged data included.
        self._write_failure: str | None = None

    # ---- creation and recovery ----

    @classmethod
    def create(cls, directory: Path, base_offset: int) -> LogSegment:
        """A new, empty segment open for appending."""
        segment = cls(directory, base_offset, 0)
        # O_EXCL: a file by this name holds bytes we know nothing about; never overwrite it.
        # No O_APPEND: appends go to `size` with pwrite, into the space reserved beyond it.
        segment.fd = os.open(segment.log_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        segment.appendable = True
        try:
            segment.index.write_file()  # an empty index, replacing any stale cache file of that name
            segment.index.open_for_append()
        except OSError:
            segment.close_fd()
            segment.log_path.unlink(missing_ok=True)
            raise
        return segment

    @classmethod
    def open_existing(cls, directory: Path, base_offset: int) -> LogSegment:
        """An existing segment, read-only, not yet checked: call check_tail_against_index() or recover()."""
        path = segment_path(directory, base_offset, LOG_SUFFIX)
        fd = os.open(path, os.O_RDONLY)
        segment = cls(directory, base_offset, os.fstat(fd).st_size)
        segment.fd = fd
        return segment

    def tail_is_zeros(self) -> bool:
        """Whether the file holds nothing but zeros after its valid batches (at least one byte of them): the space
        reserved for appends that a crash left, rather than a torn or corrupt batch. Call after recover(), which
        reads the file's length into `file_size`."""
        fd = self.require_fd()
        end = self.file_size
        position = self.size
        if position >= end:
            return False
        while position < end:
            chunk = os.pread(fd, min(_ZERO_CHECK_CHUNK, end - position), position)
            if not chunk:
                return False
            if chunk.count(0) != len(chunk):
                return False
            position += len(chunk)
        return True

    def check_tail_against_index(self, index_interval: int) -> bool:
        """The cheap check for an older segment: its index file loads and is consistent, and the batches from its last
        entry run CRC-valid and dense exactly to the end of the file. Torn writes only ever hit a file's tail, which
        is what this reads. On success the segment's state is derived from that tail; on failure, call recover()."""
        index = OffsetIndex.load(self.index.path, self.base_offset, self.size)
        if index is None:
            return False
        offset, position = index.last()
        corruption, last_batch_size = self._replay(position, offset, verify_crc=True, rebuild=None, index_interval=0)
        if corruption is not None:
            return False
        if self._bytes_since_index_entry - last_batch_size >= index_interval:
            # Entries are missing (a lost or emptied index file): reads would walk far more than one interval of
            # headers to find an offset, so have recover() rebuild it.
            return False
        self.index = index
        return True

    def recover(self, index_interval: int) -> SegmentCorruption | None:
        """CRC-check every batch from the start and rebuild the index (rewriting its file if it differs). Afterwards
        the segment's state covers the valid prefix only; returns where and why it stopped early, if it did."""
        # A failed tail check may have left a shorter size.
        self.size = self.file_size = os.fstat(self.require_fd()).st_size
        fresh = OffsetIndex(self.index.path, self.base_offset)
        corruption, _ = self._replay(0, self.base_offset, verify_crc=True, rebuild=fresh, index_interval=index_interval)
        self.index = fresh
        fresh.write_file_if_different()
        return corruption

    def _replay(
        self, position: int, offset: int, *, verify_crc: bool, rebuild: OffsetIndex | None, index_interval: int
    ) -> tuple[SegmentCorruption | None, int]:
        """Walk from (position, offset) to self.size, re-deriving size, next_offset, max_timestamp and the bytes since
        the last index entry, adding index entries to `rebuild` if given; stops before the first bad batch.
        Returns the corruption that stopped it, if any, and the size of the last good batch walked (0 if none)."""
        end, next_offset, max_timestamp, since, last_size = position, offset, NO_TIMESTAMP, 0, 0
        corruption: SegmentCorruption | None = None
        try:
            for span in walk_batches(
                self.require_fd(), position, self.size, expected_offset=offset, verify_crc=verify_crc
            ):
                if rebuild is not None and span.position > 0 and since >= index_interval:
                    rebuild.add(span.base_offset, span.position)
                    since = 0
                since += span.size
                last_size = span.size
                end = span.end
                next_offset = span.next_offset
                max_timestamp = max(max_timestamp, span.max_timestamp)
        except SegmentCorruption as exc:
            corruption = exc
        self.size = end
        self.next_offset = next_offset
        self.max_timestamp = max_timestamp
        self._bytes_since_index_entry = since
        return corruption, last_size

    def cut_tail(self) -> int:
        """Truncate the file to the valid size found by recover() (which read the file's length into `file_size`);
        returns how many bytes were cut."""
        on_disk = self.file_size
        if on_disk <= self.size:
            return 0
        os.truncate(self.log_path, self.size)
        self.file_size = self.size
        return on_disk - self.size

    # ---- appending ----

    def open_for_append(self) -> None:
        if self.appendable:
            return
        self.close_fd()
        self.fd = os.open(self.log_path, os.O_RDWR)
        self.file_size = os.fstat(self.fd).st_size
        self.appendable = True
        self.index.open_for_append()

    def stop_appending(self) -> None:
        """Rolled away: no more index appends, and the reserved space goes. The log fd stays open until the segment's
        data is fsynced."""
        self.index.close()
        self.appendable = False
        self.release_reserved()

    def release_reserved(self) -> bool:
        """Cut the file back to its batches; True if there was reserved space to cut. Best effort: a failure leaves
        zeros after the last batch, which recovery drops."""
        if self.fd is None or self.file_size <= self.size:
            return False
        try:
            os.ftruncate(self.fd, self.size)
        except OSError as exc:
            log.warning("%s: cannot release the space reserved after the last batch: %s", self.log_path, exc)
            return False
        self.file_size = self.size
        return True

    def append(self, batch: bytes, span: BatchSpan, index_interval: int, reserve_up_to: int) -> None:
        """Write one whole, stamped batch at the end (no fsync), first reserving space ahead of it up to
        `reserve_up_to` bytes of file (the roll size) if none is left. On failure nothing of it remains in the
        file."""
        if not self.appendable or self.fd is None:
            raise RuntimeError(f"{self.log_path.name} is not open for appending")
        if self._write_failure is not None:
            raise OSError(f"{self.log_path.name} is unusable after a failed write: {self._write_failure}")
        position = self.size
        end = position + len(batch)
        if end > self.file_size and self._reserving:
            self._reserve(end, reserve_up_to)
        view = memoryview(batch)
        try:
            while view:
                view = view[os.pwrite(self.fd, view, end - len(view)) :]
        except OSError as exc:
            # Typically ENOSPC on a full SD card, possibly after part of the batch went out. Cut it off so the
            # file stays a sequence of whole batches and later appends (once space is freed) land right after.
            try:
                os.ftruncate(self.fd, position)
                self.file_size = position
            except OSError as again:
                self._write_failure = str(again)
                log.error("%s: cannot cut a failed write back off (%s); refusing further appends", self.log_path, again)
            raise exc from None
        self.size = end
        self.file_size = max(self.file_size, end)
        if position > 0 and self._bytes_since_index_entry >= index_interval:
            self.index.add(span.base_offset, position)
            self._bytes_since_index_entry = 0
        self._bytes_since_index_entry += len(batch)
        self.next_offset = span.next_offset
        self.max_timestamp = max(self.max_timestamp, span.max_timestamp)

    def _reserve(self, end: int, reserve_up_to: int) -> None:
        fd = self.require_fd()
        target = max(end, min(reserve_up_to, end + RESERVE_BYTES))
        if reserve(fd, self.file_size, target - self.file_size):
            self.file_size = target
            return
        # Unsupported here, or the disk is full: append without. A failed reservation may have grown the file part
        # of the way.
        self._reserving = False
        self.file_size = os.fstat(fd).st_size

    @property
    def write_failed(self) -> bool:
        return self._write_failure is not None

    # ---- reading ----

    def require_fd(self) -> int:
        if self.fd is None:
            raise RuntimeError(f"{self.log_path.name} has no open file descriptor")
        return self.fd

    def open_for_read(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.log_path, os.O_RDONLY)
        return self.fd

    @contextmanager
    def private_walk(self) -> Iterator[BatchWalk]:
        """A walk over every batch through a descriptor of its own: a lazy consumer stays correct even if the log
        meanwhile closes this segment's descriptor (and the number is reused) or deletes the segment."""
        fd = os.open(self.log_path, os.O_RDONLY)
        try:
            yield BatchWalk(fd, 0, self.size, expected_offset=self.base_offset, verify_crc=False)
        finally:
            os.close(fd)

    def batches_from(self, offset: int) -> Iterator[BatchSpan]:
        """Batches from the one containing offset on: the index gives a position at or before it, and only the
        headers between there and the target are read (about index_interval_bytes' worth)."""
        entry_offset, position = self.index.floor(offset)
        for span in walk_batches(
            self.require_fd(), position, self.size, expected_offset=entry_offset, verify_crc=False
        ):
            if span.next_offset > offset:
                yield span

    def read_bytes(self, position: int, length: int) -> bytes:
        data = os.pread(self.require_fd(), length, position)
        if len(data) != length:
            raise SegmentCorruption(position, f"read {len(data)} of {length} bytes: the file is shorter than expected")
        return data

    def position_of_batch(self, offset: int) -> int:
        """Byte position of the batch whose base offset is `offset`, or the end when offset is next_offset."""
        if offset == self.next_offset:
            return self.size
        for span in self.batches_from(offset):
            if span.base_offset == offset:
                return span.position
            break
        raise ValueError(f"offset {offset} is not a batch boundary in segment {self.base_offset}")

    # ---- truncation, sync, removal ----

    def truncate_to(self, position: int, offset: int) -> None:
        """Drop every batch from `position` (where the batch with base offset `offset` starts) on."""
        os.truncate(self.log_path, position)
        self.file_size = position
        self.index.truncate_from(offset)
        self.size = position
        entry_offset, entry_position = self.index.last()
        corruption, _ = self._replay(entry_position, entry_offset, verify_crc=False, rebuild=None, index_interval=0)
        if corruption is not None:
            raise corruption
        self.synced_offset = min(self.synced_offset, offset)

    def fsync(self) -> None:
        os.fsync(self.require_fd())

    def close_fd(self) -> None:
        self.index.close()
        self.appendable = False
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def remove_files(self) -> None:
        self.close_fd()
        self.log_path.unlink(missing_ok=True)
        self.index.path.unlink(missing_ok=True)
