"""The sparse offset index of one segment: which byte position to start walking from to find an offset.

Entries are (offset - base_offset, position) pairs of uint32, one every index_interval_bytes of log, strictly
increasing in both. The index is a cache of what the segment file already says: appended without fsync, validated
cheaply at open and rebuilt from the segment whenever it looks wrong. In memory the pairs live in two array('I')
columns (8 bytes an entry) rather than a list of tuples (about 100 bytes an entry), because a Pi broker keeps every
index of every partition resident.
"""

from __future__ import annotations

import logging
import os
import sys
from array import array
from bisect import bisect_left, bisect_right
from pathlib import Path

log = logging.getLogger("pi_broker.log")

ENTRY_SIZE = 8  # relative offset uint32 + position uint32, big-endian on disk
_MAX_UINT32 = 0xFFFFFFFF

if array("I").itemsize != 4:  # pragma: no cover - every platform CPython runs on a Pi has 4-byte unsigned int
    raise ImportError("array('I') must hold 4-byte items for the offset index")


class OffsetIndex:
    def __init__(self, path: Path, base_offset: int) -> None:
        self.path = path
        self.base_offset = base_offset
        self._relative = array("I")
        self._positions = array("I")
        self._fd: int | None = None  # append fd, open only for the active segment

    def __len__(self) -> int:
        return len(self._relative)

    @classmethod
    def load(cls, path: Path, base_offset: int, segment_size: int) -> OffsetIndex | None:
        """Read an index file; None when it is missing or inconsistent with a segment of segment_size bytes."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) % ENTRY_SIZE:
            return None
        index = cls(path, base_offset)
        pairs = array("I")
        pairs.frombytes(data)
        if sys.byteorder == "little":
            pairs.byteswap()
        index._relative = pairs[0::2]
        index._positions = pairs[1::2]
        if not index._is_consistent(segment_size):
            return None
        return index

    def _is_consistent(self, segment_size: int) -> bool:
        # An entry at position 0 is never written (the segment start is the implicit first entry), so (0, 0) is a
        # fine "previous" for the first real one.
        prev_rel = prev_pos = 0
        for rel, pos in zip(self._relative, self._positions, strict=True):
            if rel <= prev_rel or pos <= prev_pos:
                return False
            prev_rel, prev_pos = rel, pos
        return prev_pos < segment_size

    def floor(self, offset: int) -> tuple[int, int]:
        """(base offset, position) of the last indexed batch starting at or below offset, else the segment start."""
        i = bisect_right(self._relative, offset - self.base_offset) - 1
        if i < 0:
            return self.base_offset, 0
        return self.base_offset + self._relative[i], self._positions[i]

    def last(self) -> tuple[int, int]:
        """(base offset, position) of the last entry, or the segment start when there is none."""
        if not self._relative:
            return self.base_offset, 0
        return self.base_offset + self._relative[-1], self._positions[-1]

    def add(self, offset: int, position: int) -> None:
        """Record that the batch with base offset `offset` starts at `position`; also appended to the file when open."""
        rel = offset - self.base_offset
        if not (0 < rel <= _MAX_UINT32 and 0 < position <= _MAX_UINT32):
            raise ValueError(f"index entry ({rel}, {position}) out of range")
        if self._relative and (rel <= self._relative[-1] or position <= self._positions[-1]):
            raise ValueError("index entries must increase")
        self._relative.append(rel)
        self._positions.append(position)
        if self._fd is not None:
            try:
                os.write(self._fd, self._entry_bytes(rel, position))
            except OSError as exc:
                # The index is only a cache: lose the file copy (rebuilt at the next open) rather than the append.
                # Writing stops for good, so a torn entry can only be the file's last bytes, which load() rejects.
                log.warning("stopped writing %s: %s", self.path.name, exc)
                self.close()

    @staticmethod
    def _entry_bytes(rel: int, position: int) -> bytes:
        return rel.to_bytes(4, "big") + position.to_bytes(4, "big")

    def to_bytes(self) -> bytes:
        pairs = array("I", bytes(ENTRY_SIZE * len(self._relative)))
        pairs[0::2] = self._relative
        pairs[1::2] = self._positions
        if sys.byteorder == "little":
            pairs.byteswap()
        return pairs.tobytes()

    def truncate_from(self, offset: int) -> None:
        """Drop entries for batches at or above offset and rewrite the file."""
        keep = bisect_left(self._relative, offset - self.base_offset)
        if keep == len(self._relative):
            return
        del self._relative[keep:]
        del self._positions[keep:]
        self.write_file()

    def write_file(self) -> None:
        """Replace the file with the in-memory entries. No fsync and no rename: a torn rewrite is caught at open."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, self.to_bytes())
        finally:
            os.close(fd)

    def write_file_if_different(self) -> None:
        try:
            current = self.path.read_bytes()
        except FileNotFoundError:
            current = None
        if current != self.to_bytes():
            self.write_file()

    def open_for_append(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
