"""`pi-broker`: one broker process. Recover every log, bind one CoAP context (UDP and TCP on one port), serve until
SIGTERM, then stop accepting, flush every log and exit 0.

With a zookeeper configured the same context also carries this broker's own requests (registration, heartbeats,
follower fetches, ISR changes): one context per process, one port.

Exit codes: 0 after a graceful stop, 1 when the broker cannot start (unreadable data dir, port taken), 2 for a bad
configuration.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import aiocoap
from aiocoap.transports import rfc8323common

from pi_broker.broker import Broker
from pi_broker.cluster_link import ClusterLink
from pi_broker.config import BrokerConfig, load_config
from pi_broker.follower_fetcher import FetchSettings, FollowerFetchers
from pi_broker.isr_updater import IsrUpdater
from pi_broker.peer_client import PeerClient
from pi_broker.replica_fetch import ReplicaFetchServer
from pi_broker.replica_roles import ReplicaRoles
from pi_broker.resources import build_site
from pi_broker.resources.base import BrokerContext
from pi_broker.status_line import broker_status
from pi_broker.topic_registry import RegistryError
from pikafka.config_file import ConfigError
from pikafka.journal_logging import setup_logging
from pikafka.lifecycle import run_service
from pikafka.malloc_tuning import tune_malloc
from pikafka.port_probe import ensure_port_free

log = logging.getLogger("pi_broker")

# Headroom above max_request_bytes for the CoAP header and options of a request arriving over TCP.
_TCP_FRAME_SLACK = 64 * 1024
_CONTEXT_SHUTDOWN_S = 1.0


class BrokerService:
    """The broker model plus its CoAP context, driven by pikafka.lifecycle.run_service."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.broker = Broker(config)
        self.context: aiocoap.Context | None = None
        self.replica_server = ReplicaFetchServer(self.broker)
        self.peer = PeerClient()
        self.fetchers: FollowerFetchers | None = None
        self.link: ClusterLink | None = None
        self.isr_updater: IsrUpdater | None = None

    def _build_cluster_parts(self) -> None:
        config = self.config
        assert config.zookeeper is not None
        settings = FetchSettings(config.broker_id, config.replica_fetch_wait_ms, config.replica_fetch_max_bytes)
        self.fetchers = FollowerFetchers(self.peer, self.broker.group_commit, settings, self._refresh_metadata)
        roles = ReplicaRoles(self.broker, self.fetchers)
        self.link = ClusterLink(self.broker, roles, self.peer, config.zookeeper)
        self.broker.topic_admin = self.link
        self.isr_updater = IsrUpdater(self.link, config.replica_lag_time_max_ms)
        self.replica_server.listener = self.isr_updater

    def _refresh_metadata(self) -> None:
        if self.link is not None:
            self.link.refresh_metadata_soon()

    async def start(self) -> str:
        # Before recovering any log: aiocoap would share a taken port with its owner rather than fail
        # (pikafka/port_probe.py).
        ensure_port_free(self.config.bind, self.config.port)
        self.broker.open()
        self.broker.start()
        if self.config.zookeeper is not None:
            self._build_cluster_parts()
        # aiocoap reads the largest acceptable CoAP-over-TCP message from this class attribute (1 MiB by default);
        # one process serves one broker, so setting it here sizes every connection for max_request_bytes.
        rfc8323common.RFC8323Remote._my_max_message_size = self.config.max_request_bytes + _TCP_FRAME_SLACK
        site = build_site(self.broker, self.replica_server, self.link)
        self.context = await BrokerContext.create_server_context(site, bind=(self.config.bind, self.config.port))
        self.peer.context = self.context
        mode = "standalone"
        if self.link is not None and self.isr_updater is not None:
            self.link.start()
            self.isr_updater.start(self.broker.partitions)
            mode = f"zookeeper {self.config.zookeeper}"
        return (
            f"broker {self.config.broker_id} serving coap://{_host_literal(self.config.bind)}:{self.config.port} "
            f"(udp+tcp), data dir {self.config.data_dir}, {self.broker.topic_count} topic(s), {mode}"
        )

    def status_line(self) -> str:
        """STATUS= for `systemctl status`, refreshed by run_service (pi_broker/status_line.py)."""
        clustered = self.config.zookeeper is not None
        return broker_status(self.config.broker_id, self.broker.partitions(), clustered=clustered)

    async def stop(self) -> None:
        serving = self.context is not None
        # Replication first: nothing may append to a log while it is being closed.
        if self.link is not None:
            await self.link.stop()
        if self.isr_updater is not None:
            await self.isr_updater.stop()
        if self.fetchers is not None:
            await self.fetchers.stop()
        if self.context is not None:
            # Stop accepting first; a peer that keeps a TCP connection open must not hold up the shutdown.
            try:
                await asyncio.wait_for(self.context.shutdown(), _CONTEXT_SHUTDOWN_S)
            except TimeoutError:
                log.warning("CoAP context did not shut down within %.1f s", _CONTEXT_SHUTDOWN_S)
            self.context = None
        await self.broker.close()
        if serving:
            log.info("broker %d stopped; all logs flushed", self.config.broker_id)


def _host_literal(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()  # before any thread or large buffer exists
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"pi-broker: configuration error: {exc}", file=sys.stderr)
        return 2
    # stderr as before; the journal with BROKER_ID/TOPIC/PARTITION fields under systemd (pikafka/journal_logging.py)
    setup_logging(config.log_level, "pi-broker", {"BROKER_ID": config.broker_id})
    # aiocoap logs every unanswered retransmission at INFO; keep the broker's log about the broker.
    logging.getLogger("coap-server").setLevel(max(logging.WARNING, logging.getLevelName(config.log_level)))
    try:
        return asyncio.run(run_service(BrokerService(config)))
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except (RegistryError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
