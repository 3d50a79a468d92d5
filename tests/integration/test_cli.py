"""The `pikafka` command as a user runs it: a subprocess against a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.conftest import REPO
from tests.ports import free_port


def pikafka(
    broker_url: str | None, *args: str, stdin: str = "", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PIKAFKA_BOOTSTRAP", None)
    if broker_url is not None:
        env["PIKAFKA_BOOTSTRAP"] = broker_url
    return subprocess.run(
        [sys.executable, "-m", "clients.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int, *fragments: str) -> None:
    assert result.returncode == exit_code, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("pikafka: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_topic_commands_table_and_json(broker):
    created = pikafka(broker.url, "topic", "create", "temps", "--partitions", "3", "--config", "retention_ms=60000")
    assert created.returncode == 0, created.stderr
    assert created.stdout == "created topic temps (3 partitions)\n"
    as_json = pikafka(broker.url, "topic", "create", "hums", "--format", "json")
    assert json.loads(as_json.stdout) == {"name": "hums", "partitions": 1}

    listed = pikafka(broker.url, "topic", "list")
    assert listed.stdout.split() == ["hums", "temps"]
    assert json.loads(pikafka(broker.url, "topic", "list", "--format", "json").stdout) == {"topics": ["hums", "temps"]}

    table = pikafka(broker.url, "topic", "describe", "temps").stdout.splitlines()
    assert table[0].split()[:4] == ["topic", "temps", "partitions", "3"]
    assert "retention_ms=60000" in table[1]
    assert table[2].split()[:3] == ["PARTITION", "LEADER", "LEADER_EPOCH"]
    assert [row.split()[0] for row in table[3:]] == ["0", "1", "2"]
    described = json.loads(pikafka(broker.url, "topic", "describe", "temps", "--format", "json").stdout)
    assert described["config"]["retention_ms"] == 60000
    assert len(described["partitions"]) == 3

    deleted = pikafka(broker.url, "topic", "delete", "hums")
    assert (deleted.returncode, deleted.stdout) == (0, "deleted topic hums\n")
    assert pikafka(broker.url, "topic", "list").stdout.split() == ["temps"]


def test_produce_stdin_then_consume_json_and_save(broker, tmp_path):
    assert pikafka(broker.url, "topic", "create", "lines", "--partitions", "2").returncode == 0
    lines = [f"reading {i}" for i in range(50)]
    produced = pikafka(broker.url, "produce", "lines", "--key", "pi-7", "--verbose", stdin="\n".join(lines) + "\n")
    assert produced.returncode == 0, produced.stderr
    assert produced.stdout == ""
    assert "produced 50 records to lines" in produced.stderr

    saved = tmp_path / "saved.jsonl"
    saved.write_text('{"earlier": true}\n')
    consumed = pikafka(
        broker.url, "consume", "lines", "--from-beginning", "--max", "50", "--format", "json", "--save", str(saved)
    )
    assert consumed.returncode == 0, consumed.stderr
    records = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert [r["value"] for r in records] == lines  # one key: one partition, in order
    assert {r["key"] for r in records} == {"pi-7"}
    assert [r["offset"] for r in records] == list(range(50))
    assert set(records[0]) == {"topic", "partition", "offset", "timestamp_ms", "key", "value", "headers"}
    saved_lines = saved.read_text().splitlines()
    assert saved_lines[0] == '{"earlier": true}'  # appended, not overwritten
    assert [json.loads(line) for line in saved_lines[1:]] == records

    raw = pikafka(broker.url, "consume", "lines", "--from-beginning", "--max", "3")
    assert raw.stdout == "reading 0\nreading 1\nreading 2\n"


def test_consume_timeout_stops_after_silence(broker):
    assert pikafka(broker.url, "topic", "create", "calm").returncode == 0
    assert pikafka(broker.url, "produce", "calm", stdin="one\ntwo\n").returncode == 0
    started = time.monotonic()
    result = pikafka(broker.url, "consume", "calm", "--from-beginning", "--timeout", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "one\ntwo\n"
    assert time.monotonic() - started < 10
    # Without --from-beginning only new records count: none arrive, so it just times out.
    assert pikafka(broker.url, "consume", "calm", "--timeout", "0.5").stdout == ""


def test_key_separator_and_acks_zero(broker):
    assert pikafka(broker.url, "topic", "create", "kv").returncode == 0
    result = pikafka(broker.url, "produce", "kv", "--key-separator", "=", "--acks", "0", stdin="a=1\nb=2\nplain\n")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10
    records: list[dict] = []
    while len(records) < 3 and time.monotonic() < deadline:
        out = pikafka(broker.url, "consume", "kv", "--from-beginning", "--format", "json", "--timeout", "0.5")
        records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["key"], r["value"]) for r in records] == [("a", "1"), ("b", "2"), (None, "plain")]


def test_errors_are_one_line_with_exit_codes(broker):
    assert_one_line_error(
        pikafka(broker.url, "consume", "missing", "--max", "1"), 1, "UNKNOWN_TOPIC_OR_PARTITION", "missing"
    )
    assert_one_line_error(pikafka(broker.url, "produce", "missing", stdin="x\n"), 1, "UNKNOWN_TOPIC_OR_PARTITION")
    assert_one_line_error(pikafka(broker.url, "topic", "describe", "missing"), 1, "UNKNOWN_TOPIC_OR_PARTITION")
    assert_one_line_error(pikafka(broker.url, "topic", "delete", "missing"), 1, "UNKNOWN_TOPIC_OR_PARTITION")
    assert pikafka(broker.url, "topic", "create", "dup").returncode == 0
    assert_one_line_error(pikafka(broker.url, "topic", "create", "dup"), 1, "TOPIC_ALREADY_EXISTS")
    assert_one_line_error(pikafka(broker.url, "topic", "create", "bad/name"), 1, "INVALID_TOPIC")
    assert_one_line_error(pikafka(broker.url, "topic", "create", "x", "--partitions", "0"), 2)
    assert_one_line_error(pikafka(broker.url, "topic", "frobnicate"), 2)


def test_unreachable_broker_is_one_line_and_quick():
    url = f"coap://127.0.0.1:{free_port()}"
    for args in (("topic", "list"), ("consume", "t", "--max", "1"), ("produce", "t")):
        started = time.monotonic()
        result = pikafka(url, *args, "--request-timeout", "3", stdin="x\n")
        assert time.monotonic() - started < 10
        assert_one_line_error(result, 1, "BROKER_NOT_AVAILABLE", "cannot reach 127.0.0.1")


def test_console_script_is_installed(broker):
    script = os.path.join(os.path.dirname(sys.executable), "pikafka")
    result = subprocess.run([script, "topic", "list", "--bootstrap", broker.url], capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
