"""Runs state operations with the clock, the store and the pushes around them.

ClusterState is pure; this is where time, disk and network meet it. Every operation goes through `run`, which reads
the clock once, applies the operation, logs what changed and, when the metadata version moved, persists the state
BEFORE anyone hears of the change (the response to the request, the pushes): a change a broker has acted on is never
forgotten by a zookeeper crash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from pi_zookeeper.metadata_push import PushTarget
from pi_zookeeper.state import ClusterState
from pi_zookeeper.store import StateStore
from pikafka.errors import ErrorCode, PikafkaError

log = logging.getLogger("pi_zookeeper")

T = TypeVar("T")


class Pusher(Protocol):
    def push(self, snapshot: dict[str, Any], targets: Sequence[PushTarget]) -> None: ...


class Coordinator:
    def __init__(
        self,
        state: ClusterState,
        store: StateStore,
        pusher: Pusher | None,
        heartbeat_interval_ms: int,
        session_timeout_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.store = store
        self.pusher = pusher
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.session_timeout_ms = session_timeout_ms
        self.clock = clock
        self._unsaved = False  # a save failed; retried by the next tick

    def run(self, operation: Callable[[ClusterState, float], T]) -> T:
        """Apply `operation(state, now)`; persist and push if it changed the metadata (even if it then raised)."""
        before = self.state.metadata_version
        try:
            return operation(self.state, self.clock())
        finally:
            # register() may expire other sessions before it refuses a broker: those changes still count.
            for line in self.state.drain_events():
                log.info("%s", line)
            if self.state.metadata_version != before:
                self._unsaved = True
                self._persist()
                self._push()

    def tick(self) -> None:
        """Periodic: expire sessions (elections follow) and retry a failed save."""
        self.run(lambda s, now: s.expire(now))
        if self._unsaved:
            self._persist()

    def save_now(self) -> None:
        """At shutdown: write the state whatever happened before."""
        self.store.save(self.state)
        self._unsaved = False

    def _persist(self) -> None:
        try:
            self.store.save(self.state)
        except OSError as exc:
            log.error("cannot write %s: %s (will retry)", self.store.path, exc)
            raise PikafkaError(
                ErrorCode.STORAGE_ERROR, f"cannot persist the cluster state: {exc.strerror or exc}"
            ) from None
        self._unsaved = False

    def _push(self) -> None:
        if self.pusher is None:
            return
        targets = [PushTarget(b.id, b.host, b.port) for b in self.state.live_brokers()]
        if targets:
            self.pusher.push(self.state.snapshot(), targets)
