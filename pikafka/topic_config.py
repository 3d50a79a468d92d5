"""Per-topic settings: one dataclass, validated once, shared by the broker's log and (later) the zookeeper."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pikafka.errors import ErrorCode, PikafkaError

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicConfig:
    retention_ms: int = 7 * DAY_MS  # -1: keep forever
    retention_bytes: int = -1  # per partition; -1: no limit
    segment_bytes: int = 16 * 1024 * 1024  # small segments: retention frees SD-card space in small steps
    flush_interval_ms: int = 0  # 0: fsync before every ack (group commit); >0: ack after write, fsync within this
    min_insync_replicas: int = 1
    max_message_bytes: int = 1024 * 1024
    index_interval_bytes: int = 4096
    # 1: when no in-sync replica is alive, elect an out-of-sync one (availability over acknowledged data)
    unclean_leader_election: int = 0

    @classmethod
    def from_dict(cls, raw: object) -> TopicConfig:
        """Build from a request's or file's map; unknown keys and bad values are INVALID_CONFIG."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "config must be a map")
        known = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for key, value in raw.items():
            if key not in known:
                raise PikafkaError(ErrorCode.INVALID_CONFIG, f"unknown topic setting {str(key)[:40]!r}")
            if not isinstance(value, int) or isinstance(value, bool):
                raise PikafkaError(ErrorCode.INVALID_CONFIG, f"{key} must be an integer")
            values[key] = value
        cfg = cls(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.retention_ms < -1 or self.retention_ms == 0:
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "retention_ms must be -1 or positive")
        if self.retention_bytes < -1 or self.retention_bytes == 0:
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "retention_bytes must be -1 or positive")
        if not 1024 <= self.segment_bytes <= 1 << 30:
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "segment_bytes must be between 1 KiB and 1 GiB")
        if not 0 <= self.flush_interval_ms <= 60_000:
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "flush_interval_ms must be between 0 and 60000")
        if not 1 <= self.min_insync_replicas <= 16:
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "min_insync_replicas must be between 1 and 16")
        if not 64 <= self.max_message_bytes <= 16 * 1024 * 1024:
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "max_message_bytes must be between 64 B and 16 MiB")
        if not 128 <= self.index_interval_bytes <= 1 << 20:
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "index_interval_bytes must be between 128 B and 1 MiB")

        if self.unclean_leader_election not in (0, 1):
            raise PikafkaError(ErrorCode.INVALID_CONFIG, "unclean_leader_election must be 0 or 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
