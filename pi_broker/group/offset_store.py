"""The committed offsets of the groups mapped to one `__consumer_offsets` partition this broker leads.

Built by reading the partition from its log start to its log end when this broker starts leading it (a leader never
loses what its log holds while it leads, and followers truncate to it), then kept in step by the commits that go
through it. A commit is an acks=all produce to the partition, so it is answered only once every in-sync replica
holds it durably: the loss of any one broker (or a restart of all) loses no acknowledged commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from pi_broker.broker import Broker
from pi_broker.group.offset_codec import CommittedOffset, OffsetKey, decode_commit, encode_commit
from pi_broker.messages import ProduceBatch, ProduceRequest
from pi_broker.partition import Partition
from pikafka.protocol import ACKS_ALL
from pikafka.records import decode_records, encode_batch, iter_batches

log = logging.getLogger(__name__)

_LOAD_READ_BYTES = 1024 * 1024
COMMIT_TIMEOUT_MS = 10_000


class OffsetStore:
    def __init__(self, broker: Broker, partition: Partition) -> None:
        self.broker = broker
        self.partition = partition
        self.epoch = partition.leader_epoch  # the leadership this state belongs to
        self._offsets: dict[OffsetKey, CommittedOffset] = {}
        self._max_generation: dict[str, int] = {}
        # One commit at a time, and reads wait for the commit in flight: the cache then follows the log's order, and
        # a member that just got a partition reads the previous owner's last acknowledged commit.
        self._lock = asyncio.Lock()

    @property
    def current(self) -> bool:
        return not self.partition.closed and self.partition.leader_epoch == self.epoch

    def load(self) -> None:
        """Rebuild from the partition's log (latest record per key wins, a tombstone removes the key)."""
        log_ = self.partition.log
        position, end = log_.log_start_offset, log_.log_end_offset
        count = 0
        started = time.monotonic()
        while position < end:
            data = log_.read(position, _LOAD_READ_BYTES, max_offset=end)
            if not data:
                break
            for header, view in iter_batches(data):
                for record in decode_records(view):
                    if record.offset >= position:
                        self._apply(decode_commit(record.key, record.value))
                        count += 1
                position = max(position, header.next_offset)
        log.info(
            "%s: loaded %d committed offset(s) of %d group(s) from %d record(s) in %.3f s (epoch %d)",
            self.partition.key,
            len(self._offsets),
            len({k.group for k in self._offsets}),
            count,
            time.monotonic() - started,
            self.epoch,
        )

    def _apply(self, decoded: tuple[OffsetKey, CommittedOffset | None] | None) -> None:
        if decoded is None:
            return
        key, value = decoded
        if value is None:
            self._offsets.pop(key, None)
            return
        self._offsets[key] = value
        self._max_generation[key.group] = max(self._max_generation.get(key.group, 0), value.generation)

    def max_generation(self, group: str) -> int:
        return self._max_generation.get(group, 0)

    def groups(self) -> set[str]:
        return {key.group for key in self._offsets}

    async def offsets(self, group: str) -> dict[tuple[str, int], CommittedOffset]:
        async with self._lock:
            return {(k.topic, k.partition): v for k, v in self._offsets.items() if k.group == group}

    async def commit(
        self,
        group: str,
        entries: Sequence[tuple[str, int, int | None, str]],
        generation: int,
        check: Callable[[], None],
    ) -> None:
        """Write (topic, partition, offset or None for a tombstone, metadata) entries with acks=all. `check` runs
        under the lock right before the write, so the permission it confirms still holds when the records go in."""
        async with self._lock:
            check()
            now_ms = int(time.time() * 1000)
            pairs = [
                (
                    OffsetKey(group, topic, partition),
                    None if offset is None else CommittedOffset(offset, generation, metadata, now_ms),
                )
                for topic, partition, offset, metadata in entries
            ]
            batch = encode_batch([encode_commit(key, value) for key, value in pairs])
            key = self.partition.key
            request = ProduceRequest(ACKS_ALL, COMMIT_TIMEOUT_MS, [ProduceBatch(key.topic, key.partition, batch)])
            await self.broker.produce(request)
            for pair in pairs:
                self._apply(pair)
