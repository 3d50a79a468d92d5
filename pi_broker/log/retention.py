"""Retention policy: how many of a partition's oldest segments have outlived the topic's retention settings.

Pure arithmetic on segment sizes and timestamps, kept apart from the file handling so the rules read in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pikafka.topic_config import TopicConfig

UNLIMITED = -1


class SegmentFacts(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def max_timestamp(self) -> int: ...


def expired_segment_count(segments: Sequence[SegmentFacts], config: TopicConfig, now_ms: int) -> int:
    """How many segments, oldest first, to delete. Never the last one: it is the active segment appends go to.

    Whole segments only, and only a prefix: a segment goes when its newest record is older than retention_ms, or when
    the log without it would still hold at least retention_bytes. Stopping at the first segment that must stay keeps
    the log a dense range of offsets.
    """
    remaining = sum(segment.size for segment in segments)
    count = 0
    for segment in segments[:-1]:
        too_old = config.retention_ms != UNLIMITED and segment.max_timestamp < now_ms - config.retention_ms
        too_big = config.retention_bytes != UNLIMITED and remaining - segment.size >= config.retention_bytes
        if not (too_old or too_big):
            break
        remaining -= segment.size
        count += 1
    return count
