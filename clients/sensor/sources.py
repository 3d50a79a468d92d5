"""The readers: the machine's own sensors from /sys, /proc and statvfs (present on any Pi and any Linux), and
custom ones (a command printing a number or SenML, a Python function).

A reader returns measurements or raises: SourceUnavailable when the sensor does not exist on this machine (the
service logs that once and stops reading it), anything else for one failed reading (logged, tried again next time).
"""

from __future__ import annotations

import asyncio
import glob
import importlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from clients.sensor.senml import Measurement, from_senml, parse_output

Reader = Callable[[], Awaitable[list[Measurement]]]


class SourceUnavailable(Exception):
    """This machine has no such sensor (e.g. no thermal zone in a container)."""


def thermal_zones(root: str = "/sys/class/thermal") -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(f"{root}/thermal_zone*/temp"))]


def read_cpu_temperature(root: str = "/sys/class/thermal") -> list[Measurement]:
    zones = thermal_zones(root)
    if not zones:
        raise SourceUnavailable(f"no {root}/thermal_zone*/temp")
    out = []
    for zone in zones:
        # millidegrees Celsius; zone 0 is the SoC on a Pi
        value = int(zone.read_text().strip()) / 1000
        out.append(Measurement(f"temp.{zone.parent.name}", value, "Cel"))
    return out


def read_load(path: str = "/proc/loadavg") -> list[Measurement]:
    one, five, fifteen = (float(x) for x in Path(path).read_text().split()[:3])
    return [Measurement("load1", one), Measurement("load5", five), Measurement("load15", fifteen)]


_MEMINFO_FIELDS = {"MemTotal": "mem.total", "MemAvailable": "mem.available", "MemFree": "mem.free",
                   "SwapTotal": "swap.total", "SwapFree": "swap.free"}  # fmt: skip


def read_memory(path: str = "/proc/meminfo") -> list[Measurement]:
    out = []
    for line in Path(path).read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in _MEMINFO_FIELDS:
            out.append(Measurement(_MEMINFO_FIELDS[name], int(rest.split()[0]) * 1024, "B"))
    return out


def read_disk(mount: str = "/") -> list[Measurement]:
    st = os.statvfs(mount)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used_pct = 100.0 * (total - free) / total if total else 0.0
    return [
        Measurement("disk.total", total, "B"),
        Measurement("disk.available", free, "B"),
        Measurement("disk.used", round(used_pct, 2), "%"),
    ]


def read_network(path: str = "/proc/net/dev") -> list[Measurement]:
    """Byte and packet counters of every interface but loopback (counters: consumers compute rates)."""
    out = []
    for line in Path(path).read_text().splitlines()[2:]:
        iface, _, rest = line.partition(":")
        iface = iface.strip()
        if not rest or iface == "lo":
            continue
        f = rest.split()
        out += [
            Measurement(f"net.{iface}.rx", int(f[0]), "B"),
            Measurement(f"net.{iface}.rx_packets", int(f[1])),
            Measurement(f"net.{iface}.tx", int(f[8]), "B"),
            Measurement(f"net.{iface}.tx_packets", int(f[9])),
        ]
    return out


def builtin(kind: str, path: str | None) -> Reader:
    sync: Callable[[], list[Measurement]]
    if kind == "cpu_temp":
        sync = read_cpu_temperature if path is None else (lambda: read_cpu_temperature(path))
    elif kind == "load":
        sync = read_load
    elif kind == "memory":
        sync = read_memory
    elif kind == "disk":
        mount = path or "/"
        sync = lambda: read_disk(mount)  # noqa: E731
    elif kind == "network":
        sync = read_network
    else:
        raise ValueError(f"unknown source type {kind!r}")

    async def read() -> list[Measurement]:
        # A few small reads from procfs/sysfs: cheaper inline than a thread hop.
        return sync()

    return read


def command_reader(command: str, name: str, unit: str | None, timeout_s: float) -> Reader:
    async def read() -> list[Measurement]:
        proc = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"command timed out after {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"command exited {proc.returncode}: {err.decode(errors='replace').strip()[:200]}")
        return parse_output(out.decode(errors="replace"), name, unit)

    return read


def entry_point_reader(entry_point: str, name: str, unit: str | None, timeout_s: float) -> Reader:
    """`module:function`: called in a worker thread (it may block on a bus); returns a number or SenML records."""
    module_name, _, func_name = entry_point.partition(":")
    function = getattr(importlib.import_module(module_name), func_name)
    if not callable(function):
        raise ValueError(f"{entry_point} is not callable")

    async def read() -> list[Measurement]:
        async with asyncio.timeout(timeout_s):
            result = await asyncio.to_thread(function)
        return from_senml(result, name, unit)

    return read
