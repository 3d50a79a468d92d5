"""pi-zookeeper's settings: TOML file, flags on top, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pi_zookeeper.service import DEFAULT_PORT, load_config, main
from pikafka.config_file import ConfigError


def test_defaults() -> None:
    cfg = load_config([])
    assert cfg.port == DEFAULT_PORT == 5680
    assert (cfg.heartbeat_interval_ms, cfg.session_timeout_ms) == (500, 2000)


def test_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "zk.toml"
    f.write_text(
        'bind = "127.0.0.1"\nport = 6000\ndata_dir = "/tmp/x"\nsession_timeout_ms = 3000\nlog_level = "debug"\n'
    )
    cfg = load_config(["--config", str(f), "--port", "6001", "--heartbeat-interval-ms", "1000"])
    assert (cfg.bind, cfg.port, str(cfg.data_dir)) == ("127.0.0.1", 6001, "/tmp/x")
    assert (cfg.heartbeat_interval_ms, cfg.session_timeout_ms, cfg.log_level) == (1000, 3000, "DEBUG")


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("nope = 1\n", [], "unknown setting"),
        ('port = "x"\n', [], "must be an integer"),
        ("port = 1\n", ["--port", "0"], "port must be"),
        ("", ["--heartbeat-interval-ms", "1500"], "at least twice"),
        ("port = [", [], "zk.toml"),
    ],
)
def test_bad_settings(tmp_path: Path, text: str, args: list[str], message: str) -> None:
    f = tmp_path / "zk.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", str(f), *args])


def test_main_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pi-zookeeper: cannot read") and "\n" not in err
