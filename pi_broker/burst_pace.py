"""BurstPace: how long a burst of requests read at once may grow before the group commit splits a round off it.

Under load a CoAP-over-TCP read brings many produces at once, and they are appended back to back. While the event loop
fsyncs a round itself (a fast disk), the producers of a burst hear nothing until the round that holds them is synced;
split the burst too late and they sit idle through the whole burst, too early and every round's fsync covers only a
request or two, which costs an SD card's wear and the broker's CPU. What matters is how many requests' work a round
holds, not how many milliseconds: a fixed bound is right for one CPU only. Measured on the 2-core bench machine with 16
one-record produces in flight (`bench/durability_cost_bench.py`; docs/benchmarks-history.md, stop 32): where a produce
costs the broker about 0.1 ms, a fixed 2 ms bound served 0.70-0.80 of the bare aiocoap server's rate and 0.5 ms
0.79-0.88; with 0.2 ms of CPU added to every produce and request (`--cpu-tax-us 200`, about a Pi's pace) 0.5 ms served
0.84 against 0.91-0.93 and wrote 2.08 KiB to the device per request against 1.18-1.20, in rounds of 3.1 requests against
7.1.

So the bound follows the broker's own pace: `requests` times a running mean of the gap between appends that wait
for the same round, kept within [`floor_s`, `ceiling_s`]. A gap that spans a round (the loop's own fsync, or an idle
spell between bursts) is not the pace and is not counted; one gap longer than the ceiling allows (a garbage
collection, a slow first request) counts only as that long, so it cannot hold the bound up for the bursts after it.
"""

from __future__ import annotations

_MEAN_WEIGHT = 1 / 16  # of the newest gap in the running mean: about the last 16 appends count


class BurstPace:
    def __init__(self, floor_s: float = 0.0005, ceiling_s: float = 0.002, requests: int = 6) -> None:
        if requests < 1 or floor_s < 0 or ceiling_s < 0:
            raise ValueError("BurstPace needs requests >= 1 and bounds >= 0")
        self._floor_s = min(floor_s, ceiling_s)  # a ceiling below the floor wins: no burst waits longer than it
        self._ceiling_s = ceiling_s
        self._requests = requests
        self._gap_s = self._floor_s / requests  # until gaps are seen the bound is the floor, the fast CPU's
        self._last_append: float | None = None  # monotonic time of the last append since a round began

    @property
    def gap_s(self) -> float:
        """The running mean of the gap between back-to-back appends, in seconds."""
        return self._gap_s

    @property
    def bound_s(self) -> float:
        """How old a burst's oldest waiting write may grow before a round is split off it, in seconds."""
        return min(self._ceiling_s, max(self._floor_s, self._requests * self._gap_s))

    def appended(self, now: float) -> None:
        """Note an append at monotonic time `now` that joins the round being gathered."""
        if self._last_append is not None:
            gap = min(now - self._last_append, self._ceiling_s / self._requests)
            self._gap_s += (gap - self._gap_s) * _MEAN_WEIGHT
        self._last_append = now

    def round_began(self) -> None:
        """A round took the waiting writes: the next append starts a new burst, and its gap is no pace."""
        self._last_append = None
