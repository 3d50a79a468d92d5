"""Reading back what group members printed (tests/group_consumer_process.py) and checking it."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.history_checker import Consumed


def read_lines(paths: list[Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.endswith("}"):  # a kill -9 may cut the last line
                    out.append(json.loads(line))
    return out


def consumed(lines: list[dict[str, Any]]) -> list[Consumed]:
    return [Consumed(str(x["v"]).encode(), int(x["p"]), int(x["o"])) for x in lines]


def order_violations(lines: list[dict[str, Any]]) -> list[str]:
    """Within one member and one generation, each partition's offsets must go up by exactly one."""
    last: dict[tuple[str, int, int], int] = {}
    bad = []
    for x in lines:
        key = (x["c"], x["g"], x["p"])
        if key in last and x["o"] != last[key] + 1:
            bad.append(f"{key}: {last[key]} then {x['o']}")
        last[key] = x["o"]
    return bad


def owners_per_generation(lines: list[dict[str, Any]]) -> list[str]:
    """No partition read by two members within one generation."""
    seen: dict[tuple[int, int], set[str]] = defaultdict(set)
    for x in lines:
        seen[(x["g"], x["p"])].add(x["c"])
    return [f"generation {g} partition {p}: {sorted(c)}" for (g, p), c in seen.items() if len(c) > 1]
