"""Broker configuration: TOML file, flag overrides, and one-line errors for anything wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pi_broker.config import load_config
from pikafka.config_file import ConfigError
from tests.conftest import REPO


def test_defaults_and_flags(tmp_path: Path):
    config = load_config(["--id", "3", "--bind", "127.0.0.1", "--port", "6000", "--data-dir", str(tmp_path)])
    assert (config.broker_id, config.bind, config.port, config.data_dir) == (3, "127.0.0.1", 6000, tmp_path)
    assert config.max_request_bytes == 4 * 1024 * 1024
    assert config.retention_check_interval_ms == 300_000
    assert config.loop_fsync_max_ms == 2


def test_loop_fsync_budget_from_file_and_flag(tmp_path: Path):
    path = tmp_path / "broker.toml"
    path.write_text("loop_fsync_max_ms = 5\n")
    assert load_config(["--config", str(path)]).loop_fsync_max_ms == 5
    assert load_config(["--config", str(path), "--loop-fsync-max-ms", "0"]).loop_fsync_max_ms == 0


def test_file_then_flags_override(tmp_path: Path):
    path = tmp_path / "broker.toml"
    path.write_text(
        'broker_id = 7\nport = 7000\ndata_dir = "/tmp/x"\nlog_level = "debug"\nzookeeper = "zk:2181"\n'
        "max_request_bytes = 65536\n[topic_defaults]\nretention_ms = 3600000\nsegment_bytes = 4096\n"
    )
    config = load_config(["--config", str(path), "--port", "7001"])
    assert config.broker_id == 7 and config.port == 7001 and config.data_dir == Path("/tmp/x")
    assert config.log_level == "DEBUG" and config.max_request_bytes == 65536
    assert config.topic_defaults.retention_ms == 3_600_000 and config.topic_defaults.segment_bytes == 4096


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("colour = 1\n", "unknown setting 'colour'"),
        ('port = "80"\n', "port must be an integer"),
        ("port = true\n", "port must be an integer"),
        ("port = 70000\n", "port must be between"),
        ("[topic_defaults]\nretention_ms = 0\n", "retention_ms"),
        ("[topic_defaults]\nshade = 1\n", "unknown topic setting"),
        ("port = \n", "Invalid value"),
        ("loop_fsync_max_ms = -1\n", "loop_fsync_max_ms must be between 0 and 1000"),
        ("loop_fsync_max_ms = 1.5\n", "loop_fsync_max_ms must be an integer"),
    ],
)
def test_bad_file_is_a_one_line_error(tmp_path: Path, text: str, fragment: str):
    path = tmp_path / "broker.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(path)])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_service_exits_2_with_one_line_on_bad_config(tmp_path: Path):
    path = tmp_path / "broker.toml"
    path.write_text("colour = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pi_broker.service", "--config", str(path), "--data-dir", str(tmp_path / "d")],
        cwd=REPO,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "unknown setting 'colour'" in lines[0]
    assert not (tmp_path / "d").exists()
