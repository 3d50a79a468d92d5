"""Tell every live broker about a metadata change, all at once.

The prototype's `send_leader_message` went from broker to broker in turn, so one unreachable broker stalled the news
for all the others. Here each broker gets its own task with a short timeout: a dead or slow broker only delays
itself. Failures are logged and forgotten, because every broker also learns the metadata from its heartbeat replies
(the zookeeper answers a heartbeat carrying an older metadata_version with the current snapshot): a lost push heals
within one heartbeat interval.

Pushes travel over CoAP over TCP (`coap+tcp://HOST:PORT/cluster/metadata`; brokers serve TCP on their CoAP port),
not UDP. Two reasons. A snapshot is often larger than one datagram, and over TCP it is one message instead of a
block-wise exchange. More importantly, the process has one UDP socket, shared with the responses to brokers'
heartbeats: an ICMP "port unreachable" caused by a push to a dead broker leaves a pending error on that socket
(IP_RECVERR), the kernel returns it from the next sendmsg, and that next datagram -- a heartbeat response to some
healthy broker -- is lost, so the healthy broker's heartbeat is only answered after its CoAP retransmission (2-3 s),
long enough to expire its session. Measured: with UDP pushes to a dead port, heartbeats stalled ~3 s; with TCP, never.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiocoap
import cbor2
from aiocoap.numbers.codes import Code

from pikafka.protocol import CT_CBOR

log = logging.getLogger(__name__)

CLUSTER_METADATA_PATH = "cluster/metadata"
DEFAULT_PUSH_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class PushTarget:
    broker_id: int
    host: str
    port: int

    @property
    def uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"coap+tcp://{host}:{self.port}/{CLUSTER_METADATA_PATH}"


class MetadataPusher:
    """POSTs snapshots (CBOR) to brokers' /cluster/metadata through the process's one aiocoap context."""

    def __init__(self, context: aiocoap.Context, timeout_s: float = DEFAULT_PUSH_TIMEOUT_S) -> None:
        self._context = context
        self._timeout_s = timeout_s
        # One sender task per broker and a one-slot mailbox holding the newest snapshot not yet sent to it: a slow
        # broker gets the latest version once its current push ends, never a queue of outdated ones (brokers ignore
        # versions older than what they have anyway). Pushes in flight are not cancelled for newer ones: cancelling
        # aiocoap requests mid-exchange races with their completion.
        self._latest: dict[int, tuple[PushTarget, bytes, Any]] = {}
        self._senders: dict[int, asyncio.Task[None]] = {}

    def push(self, snapshot: dict[str, Any], targets: Sequence[PushTarget]) -> None:
        """Queue the snapshot for every target (one task each) and return at once."""
        payload = cbor2.dumps(snapshot)
        version = snapshot.get("metadata_version")
        for target in targets:
            self._latest[target.broker_id] = (target, payload, version)
            if target.broker_id not in self._senders:
                self._senders[target.broker_id] = asyncio.create_task(
                    self._send_latest(target.broker_id), name=f"metadata-push-{target.broker_id}"
                )

    async def _send_latest(self, broker_id: int) -> None:
        try:
            while (item := self._latest.pop(broker_id, None)) is not None:
                await self._push_one(*item)
        finally:
            # No await between the empty mailbox and this line, so push() cannot slip a snapshot in unseen.
            self._senders.pop(broker_id, None)

    async def _push_one(self, target: PushTarget, payload: bytes, version: Any) -> None:
        request = aiocoap.Message(code=Code.POST, uri=target.uri, payload=payload, content_format=CT_CBOR)
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._context.request(request).response
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            log.warning("metadata v%s push to broker %s (%s) timed out", version, target.broker_id, target.uri)
            return
        except Exception as exc:  # any transport failure; the heartbeat path heals it
            log.warning("metadata v%s push to broker %s (%s) failed: %s", version, target.broker_id, target.uri, exc)
            return
        if not response.code.is_successful():
            text = response.payload.decode("utf-8", "replace")[:200]
            log.warning("broker %s refused metadata v%s: %s %s", target.broker_id, version, response.code, text)
        else:
            log.debug("metadata v%s pushed to broker %s", version, target.broker_id)

    async def close(self) -> None:
        """Stop pushing (at shutdown, before the context closes)."""
        self._latest.clear()
        tasks = list(self._senders.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
