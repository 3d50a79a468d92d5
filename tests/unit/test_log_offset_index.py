"""OffsetIndex: sparse lookups, the file form, and what load() rejects."""

from __future__ import annotations

from pathlib import Path

import pytest

from pi_broker.log.offset_index import OffsetIndex


def make_index(tmp_path: Path, base: int = 1000) -> OffsetIndex:
    index = OffsetIndex(tmp_path / "x.index", base)
    index.open_for_append()
    for rel, pos in [(5, 300), (9, 700), (20, 1500)]:
        index.add(base + rel, pos)
    index.close()
    return index


def test_floor_finds_the_last_entry_at_or_below(tmp_path: Path) -> None:
    index = make_index(tmp_path)
    assert index.floor(1000) == (1000, 0)
    assert index.floor(1004) == (1000, 0)
    assert index.floor(1005) == (1005, 300)
    assert index.floor(1019) == (1009, 700)
    assert index.floor(10**9) == (1020, 1500)
    assert index.last() == (1020, 1500)
    assert len(index) == 3


def test_the_file_round_trips_big_endian(tmp_path: Path) -> None:
    index = make_index(tmp_path)
    data = index.path.read_bytes()
    assert data[:8] == (5).to_bytes(4, "big") + (300).to_bytes(4, "big")
    loaded = OffsetIndex.load(index.path, 1000, segment_size=2000)
    assert loaded is not None
    assert loaded.to_bytes() == data == index.to_bytes()


@pytest.mark.parametrize(
    "data, size",
    [
        (b"\x00" * 7, 2000),  # torn entry
        ((5).to_bytes(4, "big") + (300).to_bytes(4, "big"), 300),  # points at or past the segment end
        ((5).to_bytes(4, "big") + (300).to_bytes(4, "big") + (5).to_bytes(4, "big") + (400).to_bytes(4, "big"), 2000),
        ((0).to_bytes(4, "big") + (0).to_bytes(4, "big"), 2000),  # an entry for the segment start is never written
    ],
)
def test_load_rejects_inconsistent_files(tmp_path: Path, data: bytes, size: int) -> None:
    path = tmp_path / "x.index"
    path.write_bytes(data)
    assert OffsetIndex.load(path, 0, size) is None


def test_load_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert OffsetIndex.load(tmp_path / "nope.index", 0, 100) is None


def test_truncate_from_drops_entries_at_and_above(tmp_path: Path) -> None:
    index = make_index(tmp_path)
    index.truncate_from(1009)
    assert index.last() == (1005, 300)
    assert OffsetIndex.load(index.path, 1000, 2000) is not None
    assert len(index.path.read_bytes()) == 8


def test_entries_must_increase(tmp_path: Path) -> None:
    index = make_index(tmp_path)
    with pytest.raises(ValueError):
        index.add(1020, 1600)
    with pytest.raises(ValueError):
        index.add(1030, 1500)
