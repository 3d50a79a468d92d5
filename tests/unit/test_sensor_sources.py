"""Sensor readers on fake /proc and /sys files, custom sources, SenML encoding and the configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.sensor.config import ConfigError, load_config
from clients.sensor.senml import Measurement, pack, parse_output
from clients.sensor.sources import (
    SourceUnavailable,
    command_reader,
    read_cpu_temperature,
    read_disk,
    read_load,
    read_memory,
    read_network,
)

NET_DEV = """Inter-|   Receive |  Transmit
 face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed
    lo:  100      2    0    0    0     0          0         0      100      2    0    0    0     0       0          0
  eth0: 5000     40    0    0    0     0          0         0     7000     50    0    0    0     0       0          0
"""


def test_cpu_temperature(tmp_path: Path):
    zone = tmp_path / "thermal_zone0"
    zone.mkdir()
    (zone / "temp").write_text("48312\n")
    assert read_cpu_temperature(str(tmp_path)) == [Measurement("temp.thermal_zone0", 48.312, "Cel")]


def test_cpu_temperature_absent(tmp_path: Path):
    with pytest.raises(SourceUnavailable):
        read_cpu_temperature(str(tmp_path))


def test_load_memory_network(tmp_path: Path):
    (tmp_path / "loadavg").write_text("0.50 0.25 0.10 1/123 4567\n")
    assert [m.value for m in read_load(str(tmp_path / "loadavg"))] == [0.5, 0.25, 0.1]
    (tmp_path / "meminfo").write_text("MemTotal:  1000 kB\nMemFree:  200 kB\nMemAvailable: 500 kB\nBuffers: 1 kB\n")
    assert {m.name: m.value for m in read_memory(str(tmp_path / "meminfo"))} == {
        "mem.total": 1024000,
        "mem.free": 204800,
        "mem.available": 512000,
    }
    (tmp_path / "dev").write_text(NET_DEV)
    net = {m.name: m.value for m in read_network(str(tmp_path / "dev"))}
    assert net == {"net.eth0.rx": 5000, "net.eth0.rx_packets": 40, "net.eth0.tx": 7000, "net.eth0.tx_packets": 50}


def test_real_proc_sources_work_here():
    assert read_load() and read_memory() and read_disk("/")


def test_senml_pack():
    doc = json.loads(pack("pi-3", 1700000000.1234, [Measurement("load1", 0.5), Measurement("t", 20.0, "Cel")]))
    assert doc == [{"bn": "pi-3:", "bt": 1700000000.123, "n": "load1", "v": 0.5}, {"n": "t", "u": "Cel", "v": 20.0}]


def test_parse_output_number_and_senml():
    assert parse_output(" 42.5\n", "soil", "%RH") == [Measurement("soil", 42.5, "%RH")]
    senml = '[{"bn":"x.","n":"a","v":1},{"n":"b","u":"Cel","v":2}]'
    assert parse_output(senml, "s", None) == [Measurement("x.a", 1.0, None), Measurement("x.b", 2.0, "Cel")]
    for bad in ("hello", "[]", '[{"n":"a"}]', "nan"):
        with pytest.raises(ValueError):
            parse_output(bad, "s", None)


async def test_command_reader():
    assert await command_reader("echo 7", "seven", None, 5)() == [Measurement("seven", 7.0)]
    with pytest.raises(RuntimeError):
        await command_reader("exit 3", "x", None, 5)()


def test_config_sources(tmp_path: Path):
    path = tmp_path / "s.toml"
    path.write_text(
        'topic = "t"\nacks = 1\n[[source]]\ntype = "command"\nname = "soil"\ncommand = "echo 1"\ninterval_s = 5\n'
    )
    config = load_config(["--config", str(path), "--device", "pi-9"])
    assert config.acks == "1" and config.device == "pi-9" and config.sources[0].measurement == "soil"
    path.write_text('[[source]]\ntype = "command"\ninterval_s = 5\n')
    with pytest.raises(ConfigError):
        load_config(["--config", str(path)])
