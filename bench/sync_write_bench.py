"""What one group-commit round's write and sync costs on this disk, in six forms: prints figures, asserts nothing.

    .venv/bin/python bench/sync_write_bench.py                    # 3 alternating passes of 1,000 rounds: ~10 s
    .venv/bin/python bench/sync_write_bench.py --dir /var/lib/pikafka --passes 1

A round is what benchmark (b) puts in one group commit: ROUND_REQUESTS one-record batches of a 100-byte value,
appended to one file, then made durable. Each form writes its rounds to a fresh file in --dir (default: the
temporary directory, where the benchmarks keep their logs); the forms alternate within each pass so that the
machine's noise falls on all of them alike. Run it on a Pi's SD card with --dir to see what its disk does.

Buffered writes (pwrite into the page cache), then fdatasync, as the broker does:
- `grow`: every round grows the file, so every sync must also commit the new size to ext4's journal;
- `reserved`: the broker as shipped: space reserved ahead with fallocate(2) (pi_broker/log/preallocation.py);
- `zeros`: zeros written 64 KiB ahead of the appends, so the blocks are already written (tried, and not adopted:
  every byte is then written twice).

Direct writes (O_DIRECT | O_DSYNC: no page cache, each write durable when it returns, no separate fsync): the
round's bytes are copied behind the file's last partial block in an aligned buffer, and the 4 KiB blocks that
cover them are written in one call, the last block padded with zeros. The same three ways of handling the space
ahead: `direct-grow`, `direct-reserved`, `direct-zeros`.

For each form it prints the wall time of a round's write and sync (p50, p90 and mean), the CPU time the writing
thread spent on it (kernel included), and the KiB written to the device per round as ext4 counts them (journal
included; None off ext4; the whole filesystem, so other work on the machine adds to it).
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is no package: reuse the other benches as modules
from broker_bench import VALUE
from durability_cost_bench import ROUND_REQUESTS, device_written_kib

from pi_broker.log.preallocation import reserve
from pi_broker.log.segment import RESERVE_BYTES
from pikafka.records import Record, encode_batch

BLOCK = 4096  # O_DIRECT alignment: a page, a multiple of every logical block size a Pi's disks report
ZEROS_AHEAD = 64 * 1024  # how far ahead the zeros forms keep written zeros (as tried on 2026-12-02)
BUFFERED_FORMS = ("grow", "reserved", "zeros")
FORMS = BUFFERED_FORMS + tuple(f"direct-{form}" for form in BUFFERED_FORMS)


class SpaceAhead:
    """Keeps the file's space ahead of the log end as one form wants it: grown by the writes, reserved, or zeroed."""

    def __init__(self, fd: int, how: str, write_zeros: Callable[[int, int], None]) -> None:
        self.fd = fd
        self.how = how
        self.write_zeros = write_zeros
        self.ready_to = 0  # the file offset up to which space is reserved or zeroed

    def make_room(self, end: int) -> None:
        if end <= self.ready_to or self.how == "grow":
            return
        if self.how == "reserved":
            if reserve(self.fd, self.ready_to, end + RESERVE_BYTES - self.ready_to):
                self.ready_to = end + RESERVE_BYTES
            else:
                self.how = "grow"  # as the broker does where fallocate is unsupported
            return
        while self.ready_to < end:  # zeros, ZEROS_AHEAD at a time
            self.write_zeros(self.ready_to, ZEROS_AHEAD)
            self.ready_to += ZEROS_AHEAD


class BufferedRounds:
    """pwrite each batch into the page cache, then fdatasync: the broker's group commit."""

    def __init__(self, path: Path, how: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.end = 0
        self.space = SpaceAhead(self.fd, how, lambda offset, length: _pwrite_all(self.fd, bytes(length), offset))

    def round(self, batches: list[bytes]) -> None:
        self.space.make_room(self.end + sum(map(len, batches)))
        for batch in batches:
            _pwrite_all(self.fd, batch, self.end)
            self.end += len(batch)
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class DirectRounds:
    """Copy the round behind the last partial block in an aligned buffer; write the covering blocks O_DIRECT|O_DSYNC."""

    def __init__(self, path: Path, how: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DIRECT | os.O_DSYNC, 0o644)
        self.buffer = mmap.mmap(-1, 16 * BLOCK)  # anonymous maps are page-aligned, as O_DIRECT needs
        self.zeros = mmap.mmap(-1, ZEROS_AHEAD)
        self.block_start = 0  # the file offset of buffer[0], a multiple of BLOCK
        self.fill = 0  # bytes of the log held in buffer
        self.space = SpaceAhead(self.fd, how, lambda offset, length: _pwrite_all(self.fd, self.zeros, offset))

    def round(self, batches: list[bytes]) -> None:
        data = b"".join(batches)
        self.space.make_room(self.block_start + self.fill + len(data))
        self.buffer[self.fill : self.fill + len(data)] = data
        self.fill += len(data)
        covered = -(-self.fill // BLOCK) * BLOCK
        _pwrite_all(self.fd, memoryview(self.buffer)[:covered], self.block_start)
        whole = self.fill // BLOCK * BLOCK  # keep only the last partial block for the next round
        tail = self.fill - whole
        self.buffer[:tail] = self.buffer[whole : self.fill]
        self.buffer[tail:covered] = bytes(covered - tail)
        self.block_start += whole
        self.fill = tail

    def close(self) -> None:
        os.close(self.fd)
        self.buffer.close()
        self.zeros.close()


def _pwrite_all(fd: int, data: bytes | memoryview | mmap.mmap, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


@dataclass
class FormFigures:
    walls: list[float] = field(default_factory=list)  # seconds, one per round
    cpu: float = 0.0  # seconds of the writing thread's CPU, all rounds
    device_kib: int | None = 0  # KiB ext4 wrote, all rounds

    def line(self, form: str) -> str:
        walls_us = sorted(wall * 1e6 for wall in self.walls)
        rounds = len(walls_us)
        kib = "n/a" if self.device_kib is None else f"{self.device_kib / rounds:5.1f}"
        return (
            f"  {form:16s} p50 {walls_us[rounds // 2]:5.0f} us  p90 {walls_us[rounds * 9 // 10]:5.0f} us  "
            f"mean {statistics.fmean(walls_us):5.0f} us  CPU {self.cpu / rounds * 1e6:4.0f} us  "
            f"device {kib} KiB a round"
        )


def run_form(directory: Path, form: str, batches: list[bytes], rounds: int, figures: FormFigures) -> bool:
    """One pass of one form; False if the filesystem refuses O_DIRECT."""
    how = form.removeprefix("direct-")
    path = directory / f"sync-write-bench-{form}"
    try:
        writer: BufferedRounds | DirectRounds = (
            DirectRounds(path, how) if form.startswith("direct-") else BufferedRounds(path, how)
        )
    except OSError:
        path.unlink(missing_ok=True)
        return False
    try:
        writer.round(batches)  # the first round also creates the file's first extent: not counted
        kib_before = device_written_kib(directory)
        cpu_before = time.thread_time()
        for _ in range(rounds):
            started = time.perf_counter()
            writer.round(batches)
            figures.walls.append(time.perf_counter() - started)
        figures.cpu += time.thread_time() - cpu_before
        kib_after = device_written_kib(directory)
        if kib_before is None or kib_after is None or figures.device_kib is None:
            figures.device_kib = None
        else:
            figures.device_kib += kib_after - kib_before
    finally:
        writer.close()
        path.unlink(missing_ok=True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to write (a log's disk)")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1000, help="rounds per form and pass")
    args = parser.parse_args()
    batches = [encode_batch([Record(VALUE)])] * ROUND_REQUESTS
    print(
        f"a round: {len(batches)} one-record batches, {sum(map(len, batches))} bytes; {args.passes} passes of "
        f"{args.rounds} rounds per form, in {args.dir}"
    )
    figures = {form: FormFigures() for form in FORMS}
    unsupported: set[str] = set()
    for _ in range(args.passes):
        for form in FORMS:
            if form not in unsupported and not run_form(args.dir, form, batches, args.rounds, figures[form]):
                unsupported.add(form)
    for form in FORMS:
        print(f"  {form:16s} O_DIRECT refused by this filesystem" if form in unsupported else figures[form].line(form))


if __name__ == "__main__":
    main()
