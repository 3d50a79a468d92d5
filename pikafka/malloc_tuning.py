"""glibc malloc settings that keep a long-running service's memory flat on a 1 GB Pi.

Record batches arrive as 100-500 KB buffers. glibc's default *dynamic* mmap threshold rises to the size of the
largest buffer freed, after which such buffers come from the heap, fragment it, and are never returned: the broker's
RSS crept up with every million records. A fixed threshold keeps large buffers in mmap (returned on free), a low trim
threshold gives freed heap tops back, and two arenas stop worker threads (the fsync thread) from growing arenas of
their own. Measured with bench/broker_bench.py part (d): see the README's figures.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_malloc() -> bool:
    """Apply the settings; returns False (and changes nothing) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, 64 * 1024), (M_TRIM_THRESHOLD, 128 * 1024), (M_ARENA_MAX, 2))
    return all([int(mallopt(param, value)) == 1 for param, value in settings])
