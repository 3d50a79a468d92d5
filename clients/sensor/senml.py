"""SenML (RFC 8428) in JSON: one pack per reading of one source, with the device as base name and one base time."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Measurement:
    """One SenML record: a name, a numeric value, an optional unit (RFC 8428 section 12.1 names: Cel, %, B, ...)."""

    name: str
    value: float
    unit: str | None = None


def pack(device: str, time_s: float, measurements: Sequence[Measurement]) -> bytes:
    """`[{"bn": "<device>:", "bt": <time>, "n": ..., "u": ..., "v": ...}, {"n": ..., "v": ...}, ...]`"""
    records: list[dict[str, Any]] = []
    for i, m in enumerate(measurements):
        record: dict[str, Any] = {"bn": f"{device}:", "bt": round(time_s, 3)} if i == 0 else {}
        record["n"] = m.name
        if m.unit:
            record["u"] = m.unit
        record["v"] = m.value
        records.append(record)
    return json.dumps(records, separators=(",", ":")).encode()


def parse_output(text: str, default_name: str, unit: str | None) -> list[Measurement]:
    """What a custom command printed: one number (named after the source), or a SenML JSON array."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"not a finite number: {text!r}")
        return [Measurement(default_name, number, unit)]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"neither a number nor SenML JSON: {text[:80]!r}") from None
    return from_senml(doc, default_name, unit)


def from_senml(doc: Any, default_name: str, unit: str | None) -> list[Measurement]:
    """A SenML array (or a number, or a list of numbers) from a custom source -> measurements (base name applied)."""
    if isinstance(doc, int | float) and not isinstance(doc, bool):
        return [Measurement(default_name, float(doc), unit)]
    if not isinstance(doc, list) or not doc:
        raise ValueError("SenML must be a non-empty JSON array of records")
    out = []
    base_name = ""
    for record in doc:
        if not isinstance(record, dict):
            raise ValueError("SenML records are JSON objects")
        base_name = str(record.get("bn", base_name))
        value = record.get("v")
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"SenML record without a numeric v: {record!r}")
        name = base_name + str(record.get("n", "")) or default_name
        out.append(Measurement(name, float(value), record.get("u", unit)))
    return out
