"""The STATUS= lines (`systemctl status`) and the journal handler's structured fields, on plain objects."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

from pi_broker.partition import Role, TopicPartition
from pi_broker.status_line import broker_status
from pi_zookeeper.state import ClusterState, PartitionReport
from pi_zookeeper.status_line import zookeeper_status
from pikafka.journal_logging import JournalHandler, partition_fields, priority, setup_logging, stderr_is_journal


@dataclass
class FakeIsr:
    isr: tuple[int, ...]


@dataclass
class FakePartition:
    role: Role
    replicas: tuple[int, ...] = (1, 2, 3)
    isr: FakeIsr | None = None
    failed: object | None = None


def test_broker_status_isr_complete():
    parts = [FakePartition(Role.LEADER, isr=FakeIsr((1, 2, 3))) for _ in range(4)]
    parts += [FakePartition(Role.FOLLOWER) for _ in range(8)]
    assert broker_status(1, parts, clustered=True) == "broker 1: leader for 4 of 12 partitions, ISR complete"


def test_broker_status_under_replicated_and_leaderless():
    parts = [
        FakePartition(Role.LEADER, isr=FakeIsr((1, 2, 3))),
        FakePartition(Role.LEADER, isr=FakeIsr((1,))),
        FakePartition(Role.LEADER, isr=FakeIsr((1, 3))),
        FakePartition(Role.NONE),
        FakePartition(Role.FOLLOWER, failed=object()),
    ]
    assert broker_status(1, parts, clustered=True) == (
        "broker 1: leader for 3 of 5 partitions, 2 under-replicated, 1 without leader, 1 failed (restart to recover)"
    )


def test_broker_status_standalone():
    assert broker_status(1, [FakePartition(Role.LEADER, replicas=(1,))], clustered=False) == (
        "broker 1: standalone, 1 partition"
    )


def test_zookeeper_status_counts_alive_offline_and_under_replicated():
    state = ClusterState(2.0)
    assert zookeeper_status(state) == "0 of 0 brokers alive, 0 partitions, 0 offline"
    for b in (1, 2, 3):
        state.register(b, "h", 5683 + b, None, f"inc{b}", None, now=0.0)
    state.create_topic("t", 4, 3, None, now=0.0)
    for b in (1, 2, 3):
        state.heartbeat(b, f"inc{b}", [PartitionReport("t", p, 0, 0) for p in range(4)], now=0.5)
    assert zookeeper_status(state) == "3 of 3 brokers alive, 4 partitions, 0 offline"
    for b in (1, 2):
        state.heartbeat(b, f"inc{b}", [], now=2.0)
    state.expire(now=3.0)  # broker 3's session ran out
    line = zookeeper_status(state)
    assert line.startswith("2 of 3 brokers alive, 4 partitions, 0 offline, ")
    assert line.endswith(" under-replicated")


def test_partition_fields_found_in_log_arguments():
    key = TopicPartition("readings", 2)
    assert partition_fields((key, 5)) == {"TOPIC": "readings", "PARTITION": "2"}

    @dataclass
    class HasKey:
        key: TopicPartition

    assert partition_fields(("x", HasKey(key))) == {"TOPIC": "readings", "PARTITION": "2"}
    assert partition_fields(("no partition here",)) == {}


def test_journal_handler_sends_structured_fields():
    sent: list[tuple[str, dict[str, Any]]] = []

    def send(message: str, **fields: Any) -> None:
        sent.append((message, fields))

    logger = logging.getLogger("test.journal")
    logger.propagate = False
    handler = JournalHandler(send, "pi-broker", {"BROKER_ID": 3})
    logger.addHandler(handler)
    try:
        logger.warning("partition %s: leader 2 -> %d", TopicPartition("readings", 1), 3)
        logger.error("explicit", extra={"TOPIC": "other", "PARTITION": 0, "lowercase": "ignored"})
    finally:
        logger.removeHandler(handler)
    (m1, f1), (_, f2) = sent
    assert m1 == f"partition {TopicPartition('readings', 1)}: leader 2 -> 3"
    assert f1["TOPIC"] == "readings" and f1["PARTITION"] == "1" and f1["BROKER_ID"] == "3"
    assert f1["PRIORITY"] == "4" and f1["SYSLOG_IDENTIFIER"] == "pi-broker" and f1["LOGGER"] == "test.journal"
    assert f2["TOPIC"] == "other" and f2["PARTITION"] == "0" and f2["PRIORITY"] == "3"
    assert "lowercase" not in f2 and "LOWERCASE" not in f2


def test_outside_systemd_logging_goes_to_stderr():
    stream = io.StringIO()
    assert not stderr_is_journal(stream, environ={})
    assert setup_logging("INFO", "pi-broker", {"BROKER_ID": 1}, stream=stream, environ={}) is False
    logging.getLogger("pi_broker").info("hello")
    assert "INFO pi_broker: hello" in stream.getvalue()
    assert priority(logging.DEBUG) == 7 and priority(logging.INFO) == 6 and priority(logging.CRITICAL) == 2
