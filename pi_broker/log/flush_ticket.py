"""FlushTicket: what one group commit must fsync, snapshotted on the event-loop thread and synced on a worker.

The ticket owns duplicates (os.dup) of the file descriptors it syncs. The log may meanwhile roll, delete a segment to
retention or close, and close its own descriptors, without the worker ever fsyncing a closed or, worse, reused fd.
fsync on a duplicate syncs the same file: Linux flushes the inode's dirty pages whichever descriptor wrote them.

Segments are synced with fdatasync: what a later read needs (the data, and the file's size when it changed) reaches
the disk, the modification time does not. With the space ahead of the appends reserved (preallocation.py) that
leaves the journal out of most syncs. The directory, whose entries are what its sync is for, gets a full fsync.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pi_broker.log.segment import LogSegment


class SyncHealth:
    """Whether any fsync of one log has failed. Set on the worker thread, read on the loop thread.

    After a failed fsync Linux may have dropped the dirty pages and reports the error only once, so a later fsync
    can succeed without the lost data ever reaching the disk: the log must stop counting anything as flushed.
    """

    def __init__(self) -> None:
        self.failed = False


@dataclass(eq=False)
class FlushTicket:
    end_offset: int  # the log end when snapshotted: every record below it is durable once the ticket is synced
    generation: int  # the log's truncation count when snapshotted; a truncation since voids the ticket's offsets
    segments: Sequence[tuple[LogSegment, int]]  # (segment, its next_offset when snapshotted)
    directory_changes: int | None  # the log's directory-change count covered, None when the directory was clean
    health: SyncHealth
    _fds: list[int] = field(default_factory=list, repr=False)  # the segments' (fdatasync)
    _directory_fd: int | None = field(default=None, repr=False)  # the directory's (fsync), iff directory_changes
    # Bytes appended since the log's previous ticket: what this fsync has to write. A slow round is weighed by it,
    # to tell a disk that stalls from one busy writing (fsync_placement.py).
    written_bytes: int = 0
    synced: bool = False
    _used: bool = False

    def sync(self) -> None:
        """fsync every descriptor, then close them all; a ticket is synced at most once (failed or not)."""
        if self._used:
            raise ValueError("this flush ticket was already used")
        self._used = True
        try:
            for fd in self._fds:
                os.fdatasync(fd)
            if self._directory_fd is not None:
                os.fsync(self._directory_fd)
            self.synced = True
        except OSError:
            self.health.failed = True
            raise
        finally:
            self.release()

    def release(self) -> None:
        """Close the descriptors without syncing (for a ticket that will not be synced); the ticket is then used up."""
        self._used = True
        fds, self._fds = self._fds, []
        if self._directory_fd is not None:
            fds.append(self._directory_fd)
            self._directory_fd = None
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
