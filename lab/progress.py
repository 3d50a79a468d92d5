"""Progress lines for a person watching the lab run."""

from __future__ import annotations

import sys
import time

_START = time.monotonic()


def say(message: str) -> None:
    print(f"[lab {time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)
