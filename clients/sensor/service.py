"""`pi-sensor`: read every configured source at its own interval, publish each reading as one SenML record keyed
`<device>/<source>`, through the on-disk buffer (store and forward). Serves until SIGTERM, then flushes the buffer
(what was not delivered is delivered after the next start) and exits 0.

Exit codes: 0 after a graceful stop, 1 when it cannot start (state dir unusable), 2 for a bad configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence

from clients.sensor.config import ConfigError, SensorConfig, SourceSpec, load_config
from clients.sensor.disk_buffer import DiskBuffer
from clients.sensor.forwarder import Forwarder
from clients.sensor.senml import Measurement, pack
from clients.sensor.sources import Reader, SourceUnavailable, builtin, command_reader, entry_point_reader
from pikafka.journal_logging import setup_logging
from pikafka.lifecycle import run_service

log = logging.getLogger("pi_sensor")


def make_reader(spec: SourceSpec) -> Reader:
    if spec.type == "command":
        assert spec.command is not None
        return command_reader(spec.command, spec.measurement, spec.unit, spec.timeout_s)
    if spec.type == "python":
        assert spec.entry_point is not None
        return entry_point_reader(spec.entry_point, spec.measurement, spec.unit, spec.timeout_s)
    return builtin(spec.type, spec.path)


class SensorService:
    def __init__(self, config: SensorConfig) -> None:
        self.config = config
        self.buffer = DiskBuffer(
            config.state_dir / "buffer",
            max_bytes=config.buffer_max_bytes,
            segment_bytes=config.buffer_segment_bytes,
        )
        self.forwarder = Forwarder(config, self.buffer)
        self.readings = 0
        self.active_sources: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> str:
        self.buffer.open()
        for spec in self.config.sources:
            try:
                reader = make_reader(spec)
            except (ImportError, AttributeError, ValueError) as exc:
                log.error("source %s skipped: %s", spec.measurement, exc)
                continue
            try:
                first = await reader()
            except SourceUnavailable as exc:
                log.info("source %s skipped: not on this machine (%s)", spec.measurement, exc)
                continue
            except Exception as exc:
                # It exists but this reading failed (a command's sensor busy): keep trying on schedule.
                log.warning("source %s: first reading failed: %s", spec.measurement, exc)
                first = []
            self._store(spec, first)
            self.active_sources.append(spec.measurement)
            self._tasks.append(asyncio.create_task(self._sample(spec, reader), name=f"source {spec.measurement}"))
        if not self.active_sources:
            raise OSError("no source can be read on this machine")
        self._tasks.append(asyncio.create_task(self.forwarder.run(), name="forwarder"))
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="buffer flush"))
        return (
            f"sensor {self.config.device} publishing {', '.join(self.active_sources)} to {self.config.topic} at "
            f"{self.config.bootstrap} (acks={self.config.acks}), buffer {self.buffer.directory} with "
            f"{self.buffer.pending} reading(s) waiting"
        )

    def _store(self, spec: SourceSpec, measurements: list[Measurement]) -> None:
        if not measurements:
            return
        key = f"{self.config.device}/{spec.measurement}".encode()
        self.buffer.append(key, pack(self.config.device, time.time(), measurements))
        self.readings += 1
        self.forwarder.appended.set()

    async def _sample(self, spec: SourceSpec, reader: Reader) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + spec.interval_s
        failing = False
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            # A fixed schedule (not sleep-after-read), so a slow reader does not drift the interval.
            next_at += spec.interval_s
            if next_at < loop.time():
                next_at = loop.time() + spec.interval_s
            try:
                measurements = await reader()
            except Exception as exc:
                if not failing:
                    log.warning("source %s: reading failed: %s", spec.measurement, exc)
                failing = True
                continue
            if failing:
                log.info("source %s: reading again", spec.measurement)
                failing = False
            self._store(spec, list(measurements))

    async def _flush_loop(self) -> None:
        interval = self.config.buffer_flush_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            # fsync on a worker thread: an SD card can take tens of ms and the readers must keep their schedule.
            await asyncio.to_thread(self.buffer.flush)

    def status_line(self) -> str:
        broker = "broker reachable" if self.forwarder.reachable else "broker unreachable, buffering"
        return (
            f"{len(self.active_sources)} sources, {broker}, {self.buffer.pending} buffered, "
            f"{self.buffer.dropped} dropped (buffer full), {self.forwarder.delivered} delivered"
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.buffer.close()
        log.info("sensor stopped: %d reading(s) left in the buffer for the next start", self.buffer.pending)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"pi-sensor: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, "pi-sensor", {"DEVICE": config.device})
    logging.getLogger("coap").setLevel(logging.WARNING)
    try:
        return asyncio.run(run_service(SensorService(config)))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
