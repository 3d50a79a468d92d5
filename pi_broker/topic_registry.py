"""Which topics exist, persisted in `<data_dir>/topics.json`, and where their partitions live on disk.

Each partition's log is the directory `<data_dir>/<topic>-<partition>/`. The registry file is replaced atomically,
so a crash leaves either the old or the new list. Order of operations keeps crashes harmless:
- create: make the partition directories first, then list the topic;
- delete: unlist the topic first, then remove its directories.
A directory left behind by a crash during delete is never opened again and never wiped at start; if a topic of the
same name is created later, the leftover is renamed aside (`<dir>~orphan-<ms>`, a name no topic can have) rather
than silently adopted or deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pikafka.atomic_file import fsync_directory, read_json, write_json_atomic
from pikafka.topic_config import TopicConfig

log = logging.getLogger(__name__)

REGISTRY_FILE = "topics.json"
_FORMAT_VERSION = 1


class RegistryError(Exception):
    """topics.json exists but cannot be understood: refuse to start rather than lose topics."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: TopicConfig

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partitions": self.partitions,
            "replication_factor": self.replication_factor,
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_json(cls, raw: Any) -> TopicSpec:
        if not isinstance(raw, dict):
            raise RegistryError("topic entry is not an object")
        try:
            name, partitions, rf = raw["name"], raw["partitions"], raw["replication_factor"]
        except KeyError as exc:
            raise RegistryError(f"topic entry lacks {exc.args[0]!r}") from None
        if not isinstance(name, str) or not isinstance(partitions, int) or not isinstance(rf, int):
            raise RegistryError(f"topic entry {str(name)[:40]!r} has fields of the wrong type")
        return cls(name, partitions, rf, TopicConfig.from_dict(raw.get("config") or {}))


class TopicRegistry:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._topics: dict[str, TopicSpec] = {}

    @property
    def path(self) -> Path:
        return self.data_dir / REGISTRY_FILE

    def load(self) -> None:
        """Read topics.json; a missing file is an empty registry (first start)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            document = read_json(self.path)
        except FileNotFoundError:
            self._topics = {}
            return
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read {self.path}: {exc}") from exc
        if not isinstance(document, dict) or not isinstance(document.get("topics"), list):
            raise RegistryError(f"{self.path} is not a topic registry")
        try:
            specs = [TopicSpec.from_json(entry) for entry in document["topics"]]
        except Exception as exc:
            raise RegistryError(f"{self.path}: {exc}") from exc
        self._topics = {spec.name: spec for spec in specs}

    def names(self) -> list[str]:
        return sorted(self._topics)

    def get(self, name: str) -> TopicSpec | None:
        return self._topics.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._topics

    def __len__(self) -> int:
        return len(self._topics)

    def partition_dir(self, topic: str, partition: int) -> Path:
        return self.data_dir / f"{topic}-{partition}"

    def prepare_directories(self, spec: TopicSpec) -> None:
        """Before a topic is listed: move any leftover directory of an earlier same-named topic aside."""
        for partition in range(spec.partitions):
            directory = self.partition_dir(spec.name, partition)
            if directory.exists():
                aside = directory.with_name(f"{directory.name}~orphan-{int(time.time() * 1000)}")
                log.warning("moving leftover directory %s aside to %s", directory, aside.name)
                directory.rename(aside)
        fsync_directory(self.data_dir)

    def add(self, spec: TopicSpec) -> None:
        self._topics[spec.name] = spec
        try:
            self._save()
        except BaseException:
            del self._topics[spec.name]
            raise

    def remove(self, name: str) -> TopicSpec:
        spec = self._topics.pop(name)
        try:
            self._save()
        except BaseException:
            self._topics[name] = spec
            raise
        return spec

    def _save(self) -> None:
        write_json_atomic(
            self.path,
            {"version": _FORMAT_VERSION, "topics": [self._topics[n].to_json() for n in sorted(self._topics)]},
        )
