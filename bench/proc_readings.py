"""What /proc says about a process: its memory and its CPU time, as the benchmarks read them."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, field: str) -> int:
    """A KiB field of /proc/PID/status: VmRSS (resident now), VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    try:
        return status_kib(pid, "VmRSS") / 1024
    except KeyError:
        return float("nan")


def cpu_seconds(pid: int) -> float:
    """User and system CPU the process has used (utime + stime); the command name may hold spaces and parentheses."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS
