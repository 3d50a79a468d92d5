"""Disk space reserved ahead of a segment's appends, so that the group commit's fdatasync has no file size to commit.

An append that grows a file changes its size, and ext4 must commit its journal to make a new size durable: every
fsync of a growing segment then writes journal blocks besides the data. When the file already reaches past the
write (space reserved with fallocate(2), read back as zeros), fdatasync writes the data and, at most once per newly
touched block, the extent that now holds it. Measured on the 2-core bench machine
(docs/benchmarks-history.md), 1,500-byte appends each followed by fdatasync: 150 µs and 7.0 KiB written to the
device per sync, against 215 µs and 9.5 KiB when each append grew the file. Fewer bytes per sync is what an SD
card's wear counts.

fallocate(2) is called directly, not posix_fallocate(3): where a filesystem cannot reserve space, glibc's
posix_fallocate emulates it by writing into every block, which would double an SD card's writes. The call here fails
instead, and the segment then simply grows with its appends, as it would without this module.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("pi_broker.log")


def _load_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    # fallocate64 takes 64-bit offsets even where off_t is 32 bits (a 32-bit Raspberry Pi OS); where it is missing
    # (musl), off_t is 64 bits anyway.
    function = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_fallocate = _load_fallocate()


def reserve(fd: int, offset: int, length: int) -> bool:
    """Make the file at least offset + length bytes long, the new bytes allocated and reading as zeros, without
    writing them. False if the filesystem or the disk cannot (unsupported, full, ...): the caller carries on without."""
    if _fallocate is None or length <= 0:
        return False
    if _fallocate(fd, 0, offset, length) == 0:
        return True
    error = ctypes.get_errno()
    log.debug("cannot reserve %d bytes at %d: %s", length, offset, os.strerror(error))
    return False
