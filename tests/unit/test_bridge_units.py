"""systemd/pi-mqtt-bridge.service and systemd/pi-sensor.service meet the standard of the broker's unit:
`systemd-analyze verify` clean, exposure <= 2.0, a hardened notify service with a watchdog.

(tests/unit/test_systemd_units.py checks only the units its deployment owns; this is the same check for these two.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = {"pi-mqtt-bridge.service": "pi-mqtt-bridge", "pi-sensor.service": "pi-sensor"}
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (apt-get install systemd)")


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_verifies_clean(unit: str, tmp_path: Path):
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    stub = venv_bin / UNITS[unit]
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = (UNITS_DIR / unit).read_text()
    assert f"/opt/pikafka/venv/bin/{UNITS[unit]} " in text
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/pikafka/venv/bin/", f"{venv_bin}/"))
    result = subprocess.run(
        [str(ANALYZE), "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", sorted(UNITS))
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


@pytest.mark.parametrize("unit", sorted(UNITS))
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
