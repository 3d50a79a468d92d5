"""pi-sensor's footprint: prints figures, asserts nothing.

    .venv/bin/python bench/sensor_footprint.py            # 60 s of measurement
    .venv/bin/python bench/sensor_footprint.py --seconds 20

A pi-sensor process (python -m clients.sensor.service) reads one source once a second (`load`: one SenML record per
second, acks=all) to a real broker on loopback. After a 5 s warm-up its resident memory (VmRSS, and the peak VmHWM)
is read from /proc/PID/status and its CPU use from the utime+stime of /proc/PID/stat over the measured window.
Pass --sources all to read the five built-in sources every second instead (five records per second).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from proc_readings import cpu_seconds, status_kib  # noqa: E402  (bench/, the script's directory)

from clients import Admin, Consumer  # noqa: E402
from tests.conftest import BrokerProcess  # noqa: E402
from tests.ports import free_port  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--sources", choices=("one", "all"), default="one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = BrokerProcess(data_dir=work / "broker", port=free_port(), log_path=work / "broker.log")
        broker.start()
        async with Admin(broker.url) as admin:
            await admin.create_topic("readings", partitions=1)
        kinds = ["load"] if args.sources == "one" else ["cpu_temp", "load", "memory", "disk", "network"]
        config = work / "sensor.toml"
        config.write_text(
            f'bootstrap = "{broker.url}"\ntopic = "readings"\ndevice = "bench"\nstate_dir = "{work / "state"}"\n'
            + "".join(f'[[source]]\ntype = "{k}"\ninterval_s = 1\n' for k in kinds)
        )
        with (work / "sensor.log").open("ab") as log:
            sensor = subprocess.Popen(
                [sys.executable, "-m", "clients.sensor.service", "--config", str(config)],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            await asyncio.sleep(5)  # warm-up: imports, first connection, first readings
            cpu0, t0 = cpu_seconds(sensor.pid), time.monotonic()
            rss = []
            while time.monotonic() - t0 < args.seconds:
                await asyncio.sleep(1)
                rss.append(status_kib(sensor.pid, "VmRSS"))
            cpu1, t1 = cpu_seconds(sensor.pid), time.monotonic()
            peak = status_kib(sensor.pid, "VmHWM")
        finally:
            sensor.send_signal(signal.SIGTERM)
            sensor.wait(20)
        async with Consumer("readings", bootstrap=broker.url) as consumer:
            delivered = sum((await consumer.end_offsets(consumer.assignment())).values())
        broker.terminate()
        print(f"pi-sensor, {len(kinds)} source(s) read every second, acks=all, {args.seconds:.0f} s measured:")
        print(f"  RSS   {sum(rss) / len(rss) / 1024:6.1f} MiB average, {max(rss) / 1024:6.1f} MiB max, "
              f"{peak / 1024:6.1f} MiB peak (VmHWM)")  # fmt: skip
        print(f"  CPU   {100 * (cpu1 - cpu0) / (t1 - t0):6.2f} % of one core ({cpu1 - cpu0:.2f} s in {t1 - t0:.0f} s)")
        print(f"  records in the topic: {delivered}")
        print(f"  machine: {os.uname().machine}, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    asyncio.run(main())
