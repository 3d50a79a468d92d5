"""The state file: always a complete JSON document, never overwritten when unreadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pi_zookeeper.state import ClusterState
from pi_zookeeper.store import StateFileError, StateStore


def make_state() -> ClusterState:
    s = ClusterState(2.0, cluster_id="abc")
    s.register(1, "pi-1", 5683, None, "i1", None, 0.0)
    s.create_topic("t", 2, 1, None, 0.0)
    return s


def test_missing_file_loads_as_none(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "zk")
    store.open()
    assert store.load(2.0, now=0.0) is None
    store.close()


def test_save_is_readable_indented_json_and_loads_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.open()
    s = make_state()
    store.save(s)
    text = store.path.read_text()
    assert text.startswith("{\n  ")  # indented for humans
    assert json.loads(text)["cluster_id"] == "abc"
    loaded = store.load(2.0, now=10.0)
    assert loaded is not None and loaded.to_json() == s.to_json()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    store.close()


def test_leftover_temp_file_from_a_crash_is_ignored_and_removed(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.open()
    store.save(make_state())
    store.close()
    # a crash between writing the temporary file and renaming it: half a document next to the real one
    torn = tmp_path / ".cluster.json.k3j2.tmp"
    torn.write_text('{"cluster_id": "abc", "topi')
    store = StateStore(tmp_path)
    store.open()
    loaded = store.load(2.0, now=0.0)
    assert loaded is not None and "t" in loaded.topics
    assert not torn.exists()
    store.close()


def test_each_save_replaces_the_whole_document(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.open()
    s = make_state()
    for i in range(20):
        s.create_topic(f"x{i}", 1, 1, None, 0.0)
        store.save(s)
        assert len(json.loads(store.path.read_text())["topics"]) == i + 2
    store.close()


@pytest.mark.parametrize("content", ["", "{not json", '{"format": 1}', "[]", "\xff\xfe"])
def test_unparseable_file_refuses_and_is_not_overwritten(tmp_path: Path, content: str) -> None:
    path = tmp_path / "cluster.json"
    path.write_bytes(content.encode("latin-1"))
    store = StateStore(tmp_path)
    store.open()
    with pytest.raises(StateFileError) as e:
        store.load(2.0, now=0.0)
    assert "\n" not in str(e.value)
    assert path.read_bytes() == content.encode("latin-1")
    store.close()


def test_data_dir_is_locked_against_a_second_zookeeper(tmp_path: Path) -> None:
    a, b = StateStore(tmp_path), StateStore(tmp_path)
    a.open()
    with pytest.raises(StateFileError, match="in use"):
        b.open()
    a.close()
    b.open()
    b.close()
