"""What the lab asks of the deployed cluster, through the real `pikafka` command line inside the containers."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lab.hosts import Container
from tests.history_checker import Ack, Consumed, Verdict, check

PIKAFKA = "/opt/pikafka/venv/bin/pikafka"
_ACKS_ALL = ["--acks", "all", "--verbose"]


@dataclass
class History:
    """Every value acknowledged so far (the CLI exits 0 only when every record was acknowledged)."""

    topic: str
    acked: list[bytes] = field(default_factory=list)

    def produce(self, host: Container, bootstrap: str, values: list[str]) -> None:
        host.exec(
            [PIKAFKA, "produce", self.topic, "--bootstrap", bootstrap, "--acks", "all"],
            input="".join(v + "\n" for v in values),
            timeout=180,
        )
        self.acked.extend(v.encode() for v in values)

    def _consume_args(self) -> list[str]:
        return ["--max", str(len(self.acked)), "--timeout", "15", "--format", "json"]

    def verify(self, host: Container, bootstrap: str) -> Verdict:
        out = host.exec(
            [PIKAFKA, "consume", self.topic, "--bootstrap", bootstrap, "--from-beginning", *self._consume_args()],
            timeout=180,
        )
        consumed = []
        for line in out.splitlines():
            if line.strip():
                rec = json.loads(line)
                consumed.append(Consumed(str(rec["value"]).encode(), int(rec["partition"]), int(rec["offset"])))
        return check([Ack(v, -1, -1) for v in self.acked], consumed)


def cluster_view(host: Container, bootstrap: str) -> dict[str, Any]:
    out = host.exec([PIKAFKA, "cluster", "--bootstrap", bootstrap, "--format", "json"], check=False, timeout=30)
    try:
        view: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError:
        return {"brokers": [], "partitions": [], "error": out}
    return view


def healthy(view: dict[str, Any], brokers: int) -> bool:
    """Every broker alive, every partition led and fully replicated."""
    alive = [b for b in view.get("brokers", []) if b.get("alive")]
    parts = view.get("partitions", [])
    return (
        len(alive) == brokers
        and bool(parts)
        and all(p.get("leader") is not None and not p.get("under_replicated") for p in parts)
    )


def led_by_live(view: dict[str, Any]) -> bool:
    """Every partition has a leader that is alive (after a failover)."""
    alive = {b["id"] for b in view.get("brokers", []) if b.get("alive")}
    parts = view.get("partitions", [])
    return bool(parts) and all(p.get("leader") in alive for p in parts)


def wait_for(what: str, probe: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def unit_state(host: Container, unit: str) -> dict[str, str]:
    out = host.exec(
        ["systemctl", "show", unit, "-p", "ActiveState,SubState,StatusText,NRestarts,MainPID,Type"], check=False
    )
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


class BackgroundProducer:
    """`pikafka produce --acks all` in one container, fed a numbered line every `interval_s` until stopped."""

    def __init__(self, host: Container, topic: str, bootstrap: str, prefix: str, interval_s: float = 0.02) -> None:
        assert host.init_pid is not None
        self.prefix = prefix
        self.sent: list[str] = []
        self._interval = interval_s
        self._stop = threading.Event()
        self.proc = subprocess.Popen(
            [
                "nsenter",
                "-t",
                str(host.init_pid),
                "-a",
                PIKAFKA,
                "produce",
                topic,
                "--bootstrap",
                bootstrap,
                *_ACKS_ALL,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        assert self.proc.stdin is not None
        i = 0
        while not self._stop.is_set():
            value = f"{self.prefix}-{i}"
            try:
                self.proc.stdin.write(value + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                return
            self.sent.append(value)
            i += 1
            time.sleep(self._interval)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        self._stop.set()
        self._thread.join(timeout=10)
        # communicate() closes stdin itself (end of input: the CLI flushes and exits); closing it first makes
        # communicate() flush a closed file.
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err
