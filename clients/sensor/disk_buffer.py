"""The store-and-forward buffer: readings waiting for a broker, in append-only segment files under the state dir.

Every reading goes through it (appended, then read back by the forwarder), so live and buffered readings can never
overtake each other. A frame is

    u32 length of seq+payload | u32 CRC-32 of seq+payload | u64 seq | payload (u16 key length | key | value)

Segments are named by their first sequence number. At open every segment is read back frame by frame; the first
torn or corrupt frame and everything after it in that segment is cut off (a power cut mid-write). The `cursor` file
holds the sequence number of the next reading to deliver; segments wholly below it are deleted.

Durability: appends are plain writes; `flush()` (every buffer_flush_interval_ms) fsyncs the active segment and
rewrites the cursor, so a power cut loses at most the readings of the last flush interval. A crash of the process
alone loses nothing (the writes are in the page cache).

Bound: when the segments exceed max_bytes the oldest segment is deleted, undelivered readings and all; the number
of readings dropped that way is counted (`dropped`).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pikafka.atomic_file import fsync_directory

log = logging.getLogger(__name__)

_FRAME = struct.Struct(">IIQ")  # length, crc, seq
_KEY_LEN = struct.Struct(">H")
_SUFFIX = ".buf"
CURSOR_FILE = "cursor"


@dataclass
class _Segment:
    path: Path
    first_seq: int
    count: int
    size: int

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count


class DiskBuffer:
    def __init__(self, directory: Path, *, max_bytes: int = 8 * 1024 * 1024, segment_bytes: int = 256 * 1024) -> None:
        if max_bytes < 4096:
            raise ValueError("the buffer needs at least 4096 bytes")
        self.directory = directory
        self.max_bytes = max_bytes
        # At least four segments fit in the bound, so dropping one drops at most a quarter of the backlog.
        self.segment_bytes = max(512, min(segment_bytes, max_bytes // 4))
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the active (last) segment, open for appending
        self._cursor = 0
        self._cursor_saved = -1
        self._unsynced = False
        self.dropped = 0
        # Sequential reads continue where the last one stopped instead of rescanning the segment.
        self._read_pos: tuple[int, int] | None = None  # (seq, byte offset in its segment)

    # -- opening ----------------------------------------------------------------------------------------------

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        cursor_path = self.directory / CURSOR_FILE
        try:
            self._cursor = int(cursor_path.read_text().strip() or 0)
        except (OSError, ValueError):
            self._cursor = 0
        self._cursor_saved = self._cursor
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                first = int(path.name.removesuffix(_SUFFIX))
            except ValueError:
                continue
            count, good = _scan(path, first)
            if good < path.stat().st_size:
                log.warning("buffer segment %s: cut a torn or corrupt tail at byte %d", path.name, good)
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
            if self._segments and self._segments[-1].end_seq != first:
                log.warning("buffer segment %s does not follow its predecessor; later readings renumbered", path.name)
            self._segments.append(_Segment(path, first, count, good))
        self._delete_delivered()
        if self._segments and self._cursor < self._segments[0].first_seq:
            self._cursor = self._segments[0].first_seq
        if self._segments:
            self._cursor = min(self._cursor, self._segments[-1].end_seq)
        else:
            self._new_segment(self._cursor)
        if self._fd is None:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- state ------------------------------------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """Sequence number of the next reading to deliver."""
        return self._cursor

    @property
    def end_seq(self) -> int:
        return self._segments[-1].end_seq

    @property
    def pending(self) -> int:
        return self.end_seq - self._cursor

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    # -- writing ----------------------------------------------------------------------------------------------

    def append(self, key: bytes, value: bytes) -> int:
        """Store one reading; returns its sequence number. Durable after the next flush()."""
        active = self._segments[-1]
        seq = active.end_seq
        body = struct.pack(">Q", seq) + _KEY_LEN.pack(len(key)) + key + value
        frame = struct.pack(">II", len(body), zlib.crc32(body)) + body
        if active.size and active.size + len(frame) > self.segment_bytes:
            self._rotate(seq)
            active = self._segments[-1]
        assert self._fd is not None
        os.write(self._fd, frame)
        active.size += len(frame)
        active.count += 1
        self._unsynced = True
        self._enforce_bound()
        return seq

    def _new_segment(self, first_seq: int) -> None:
        path = self.directory / f"{first_seq:020d}{_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o640)
        self._segments.append(_Segment(path, first_seq, 0, 0))

    def _rotate(self, first_seq: int) -> None:
        assert self._fd is not None
        if self._unsynced:
            os.fsync(self._fd)  # a finished segment is complete on disk before the next one exists
        os.close(self._fd)
        self._new_segment(first_seq)
        fsync_directory(self.directory)

    def _enforce_bound(self) -> None:
        while self.size_bytes > self.max_bytes and len(self._segments) > 1:
            oldest = self._segments.pop(0)
            lost = max(0, oldest.end_seq - max(self._cursor, oldest.first_seq))
            if lost:
                self.dropped += lost
                log.warning(
                    "buffer full (%d bytes): dropped the %d oldest undelivered reading(s), %d dropped so far",
                    self.max_bytes,
                    lost,
                    self.dropped,
                )
            self._cursor = max(self._cursor, oldest.end_seq)
            self._read_pos = None
            oldest.path.unlink(missing_ok=True)

    def flush(self) -> None:
        """fsync the active segment and save the cursor (the buffer_flush_interval_ms tick)."""
        if self._unsynced and self._fd is not None:
            os.fsync(self._fd)
            self._unsynced = False
        if self._cursor != self._cursor_saved:
            tmp = self.directory / (CURSOR_FILE + ".tmp")
            tmp.write_text(f"{self._cursor}\n")
            os.replace(tmp, self.directory / CURSOR_FILE)
            self._cursor_saved = self._cursor

    # -- reading and acknowledging ----------------------------------------------------------------------------

    def read(self, from_seq: int, max_records: int) -> list[tuple[int, bytes, bytes]]:
        """Up to max_records readings (seq, key, value) from from_seq on (from the oldest kept if it was dropped)."""
        out: list[tuple[int, bytes, bytes]] = []
        seq = max(from_seq, self._segments[0].first_seq)
        for segment in self._segments:
            if len(out) >= max_records:
                break
            if seq >= segment.end_seq or segment.count == 0:
                continue
            start = 0
            if self._read_pos is not None and self._read_pos[0] == seq and seq > segment.first_seq:
                start = self._read_pos[1]
            with open(segment.path, "rb") as f:
                f.seek(start)
                data = f.read(segment.size - start)
            pos = 0
            while pos + _FRAME.size <= len(data) and len(out) < max_records:
                length, _, frame_seq = _FRAME.unpack_from(data, pos)
                end = pos + 8 + length
                if frame_seq >= seq:
                    body = data[pos + 8 + 8 : end]
                    (key_len,) = _KEY_LEN.unpack_from(body)
                    out.append((frame_seq, bytes(body[2 : 2 + key_len]), bytes(body[2 + key_len :])))
                    seq = frame_seq + 1
                pos = end
            self._read_pos = (seq, start + pos) if seq < segment.end_seq else None
        return out

    def acknowledge(self, next_seq: int) -> None:
        """Everything below next_seq was delivered: move the cursor, delete segments wholly delivered."""
        if next_seq > self._cursor:
            self._cursor = min(next_seq, self.end_seq)
            self._delete_delivered()

    def _delete_delivered(self) -> None:
        while len(self._segments) > 1 and self._segments[0].end_seq <= self._cursor:
            self._segments.pop(0).path.unlink(missing_ok=True)


def _scan(path: Path, first_seq: int) -> tuple[int, int]:
    """(frames, byte length) of the valid prefix of a segment: CRCs match and sequence numbers run on."""
    data = path.read_bytes()
    pos = count = 0
    while pos + _FRAME.size <= len(data):
        length, crc, seq = _FRAME.unpack_from(data, pos)
        end = pos + 8 + length
        if length < 8 + _KEY_LEN.size or end > len(data) or seq != first_seq + count:
            break
        if zlib.crc32(data[pos + 8 : end]) != crc:
            break
        pos = end
        count += 1
    return count, pos
