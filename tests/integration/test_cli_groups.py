"""`pikafka consume --group`, `--follow` and `pikafka group list|describe|reset` against a real broker."""

from __future__ import annotations

import json

from tests.integration.test_cli import assert_one_line_error, pikafka


def lines(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_group_consume_commit_describe_reset(broker):
    url = broker.url
    assert pikafka(url, "topic", "create", "gt", "--partitions", "2").returncode == 0
    assert pikafka(url, "produce", "gt", stdin="".join(f"r{i}\n" for i in range(10))).returncode == 0
    first = lines(pikafka(url, "consume", "gt", "--group", "g", "--from-beginning", "--max", "10"))
    assert sorted(first) == sorted(f"r{i}" for i in range(10))

    assert "g" in pikafka(url, "group", "list").stdout
    described = json.loads(pikafka(url, "group", "describe", "g", "--format", "json").stdout)
    assert sum(o["offset"] for o in described["offsets"]) == 10
    assert all(o["lag"] == 0 for o in described["offsets"])

    assert pikafka(url, "produce", "gt", stdin="".join(f"s{i}\n" for i in range(5))).returncode == 0
    described = json.loads(pikafka(url, "group", "describe", "g", "--format", "json").stdout)
    assert sum(o["lag"] for o in described["offsets"]) == 5
    # The group resumes from its commits: only the 5 new records.
    resumed = lines(pikafka(url, "consume", "gt", "--group", "g", "--max", "5", "--timeout", "5"))
    assert sorted(resumed) == sorted(f"s{i}" for i in range(5))

    assert pikafka(url, "group", "reset", "g", "--to", "earliest").returncode == 0
    again = lines(pikafka(url, "consume", "gt", "--group", "g", "--max", "15", "--timeout", "5"))
    assert len(again) == 15

    assert_one_line_error(pikafka(url, "group", "describe", "nope"), 1)


def test_follow_pushes_records(broker):
    url = broker.url
    assert pikafka(url, "topic", "create", "ft").returncode == 0
    assert pikafka(url, "produce", "ft", stdin="a\nb\nc\n").returncode == 0
    pushed = lines(pikafka(url, "consume", "ft", "--follow", "--from-beginning", "--max", "3", "--timeout", "5"))
    assert pushed == ["a", "b", "c"]
