"""The unit files in systemd/ pass `systemd-analyze verify` and score <= 2.0 in `systemd-analyze security`.

systemd-analyze comes with Debian's `systemd` package and works without systemd as PID 1 (CI installs it; without it
these tests skip). `verify` insists that ExecStart's program exists, so the units are verified from a copy whose
only change is the venv path, pointed at stub executables; the security assessment reads the unmodified files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
# Every unit the product ships, and the program its ExecStart runs.
PROGRAMS = {
    "pi-broker.service": "pi-broker",
    "pi-zookeeper.service": "pi-zookeeper",
    "pi-mqtt-bridge.service": "pi-mqtt-bridge",
    "pi-sensor.service": "pi-sensor",
}
UNITS = sorted(PROGRAMS)
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (apt-get install systemd)")


def test_every_service_has_exactly_one_unit():
    assert sorted(p.name for p in UNITS_DIR.glob("*.service")) == UNITS


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_clean(unit: str, tmp_path: Path):
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    stub = venv_bin / PROGRAMS[unit]
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = (UNITS_DIR / unit).read_text()
    assert f"/opt/pikafka/venv/bin/{PROGRAMS[unit]} " in text
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/pikafka/venv/bin/", f"{venv_bin}/"))
    result = subprocess.run(
        [str(ANALYZE), "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_unit_exposure_is_low(unit: str):
    result = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", "--no-pager", str(UNITS_DIR / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_a_hardened_notify_service(unit: str):
    text = (UNITS_DIR / unit).read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#")
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["Restart"] == "on-failure"
    assert settings["User"] == "pikafka"
    assert settings["StateDirectory"].startswith("pikafka/")
    assert int(settings["WatchdogSec"]) >= 5
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["ProtectSystem"] == "strict"
    assert settings["MemoryMax"].endswith("M")
