"""FsyncPlacement: whether the group commit fsyncs a round on the event loop's own thread or on an fsync thread.

Handing a round to a thread and back costs the broker on every round: the thread is woken, and the GIL passes back
and forth while the thread returns from the fsync and reports. The loop feels it in every call that gives up the GIL
for a system call: an append's os.write took over 28 µs one time in ten and about 450 µs one time in a hundred
while fsync threads ran, against 10 and 25 µs with the loop fsyncing. (A bare thread fsyncing beside appends, with
no reporting, cost them under 40 µs at the 99th percentile: the kernel is not what makes them wait.) On the 2-core
bench machine that came to about 70 µs of broker CPU per one-record produce, a quarter of the broker's whole produce
path (docs/benchmarks.md); a round the loop fsyncs itself costs none of it.

But while the loop fsyncs it serves no one. That is a good trade for a disk whose fsync takes a fraction of a
millisecond (an SSD or eMMC on a Pi 5, this VM's disk) and a bad one for an SD card whose fsyncs take milliseconds
and, now and then, a whole second.

So the loop fsyncs a round itself only while the disk has shown itself fast:
- at least `min_samples` fsync rounds timed, with a running mean at most `loop_max_s` (2 ms by default, the broker
  setting `loop_fsync_max_ms`), and
- no round slower than `stall_s` (50 ms) within the last `stall_hold_s` (a minute). A round that had much to write
  may take longer before it counts as a stall: `stall_s` plus its bytes at `stall_bytes_per_s` (4 MiB/s, below what
  an SD card writes). A stall is a disk that stops answering, not one busy writing what it was given: under
  batched produces (benchmark (a)) a round on this VM's disk writes 0.5 to 1 MiB, and the slowest took 12 to 30 ms
  in a dozen runs. Counted as a stall, one such round over 50 ms would keep the small rounds that follow on the
  threads for a minute.
It goes back to the threads once the mean passes twice `loop_max_s` (the gap keeps a disk near the limit from
flapping between the two) or a round stalls. The threads keep timing the disk, so a disk that is fast again is
noticed. A stall can hold the loop once, for as long as that one fsync takes; the rounds after it go to the threads,
and each further stall the loop suffers doubles the hold (up to a day), so a disk that stalls now and then ends up
on the threads for good.

Nothing here changes what is durable when: either way a producer is answered only after its round's fsync returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_MEAN_WEIGHT = 1 / 16  # of the newest round in the running mean: about the last 16 rounds count


class FsyncPlacement:
    def __init__(
        self,
        loop_max_s: float = 0.002,
        *,
        min_samples: int = 16,
        stall_s: float = 0.05,
        stall_bytes_per_s: float = 4 * 1024 * 1024,
        stall_hold_s: float = 60.0,
        max_stall_hold_s: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop_max_s = loop_max_s
        self._min_samples = min_samples
        self._stall_s = stall_s
        self._stall_bytes_per_s = stall_bytes_per_s
        self._stall_hold_s = stall_hold_s
        self._max_stall_hold_s = max_stall_hold_s
        self._clock = clock
        self._samples = 0
        self._mean_s = 0.0
        self._last_stall = float("-inf")
        self._stalls_on_loop = 0
        self.on_loop = False  # where the next round is fsynced: the loop's thread (True) or an fsync thread

    @property
    def mean_s(self) -> float:
        """The running mean of recent rounds' fsync time, in seconds."""
        return self._mean_s

    def record(self, seconds: float, written_bytes: int = 0) -> None:
        """Note how long a round's fsyncs took, wherever they ran, and how many bytes they had to write; decide
        where the next round runs."""
        self._samples += 1
        weight = max(_MEAN_WEIGHT, 1 / self._samples)  # the first rounds: a plain mean, not one biased to zero
        self._mean_s += (seconds - self._mean_s) * weight
        now = self._clock()
        stalled = seconds > self._stall_s + written_bytes / self._stall_bytes_per_s
        if stalled:
            if not self.on_loop and now - self._last_stall >= self._stall_hold_s:
                # Said once a hold, not once a stall: a disk that stalls often would fill the journal. Without it
                # a broker that keeps its rounds on the threads for a stall nobody saw cannot be told from one
                # whose disk is slow on average.
                log.info(
                    "an fsync round stalled: %.1f ms for %d bytes; "
                    "fsyncs stay on the fsync threads for at least %.0f s",
                    seconds * 1000,
                    written_bytes,
                    self._stall_hold_s,
                )
            self._last_stall = now
        if self.on_loop:
            if stalled:
                if self._stalls_on_loop:  # not the first time the loop waited this long: keep it off for longer
                    self._stall_hold_s = min(2 * self._stall_hold_s, self._max_stall_hold_s)
                self._stalls_on_loop += 1
            if stalled or self._mean_s > 2 * self._loop_max_s:
                self.on_loop = False
                log.info(
                    "fsyncs move to the fsync threads: last round %.1f ms for %d bytes, recent mean %.2f ms",
                    seconds * 1000,
                    written_bytes,
                    self._mean_s * 1000,
                )
        elif (
            self._loop_max_s > 0
            and self._samples >= self._min_samples
            and self._mean_s <= self._loop_max_s
            and now - self._last_stall >= self._stall_hold_s
        ):
            self.on_loop = True
            log.info("fsyncs move to the event loop: recent mean %.2f ms", self._mean_s * 1000)
