"""`make lab`: boot N Debian hosts with real systemd, deploy pikafka to them with the real playbook over ssh, and
check it end to end (failover after SIGKILL and after a power cut, idempotence, a rolling restart under load), and
the MQTT side: lab1 also runs mosquitto and pi-mqtt-bridge, lab2 pi-sensor, and the sensor's SenML readings must reach
a `mosquitto_sub` through the cluster (--no-bridge leaves that part out).

    sudo .venv/bin/python -m lab.lab [--hosts 3] [--keep-going] [--no-bridge] [--hold FILE]

Root on Debian with debootstrap, systemd-container, iproute2 and openssh-client. Prints progress and a summary table
(step, result, seconds); tears down every container, namespace and mount it made, also when a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.cleanup import Cleanup
from lab.cluster_checks import (
    PIKAFKA,
    BackgroundProducer,
    History,
    cluster_view,
    healthy,
    led_by_live,
    unit_state,
    wait_for,
)
from lab.hosts import CONTROLLER_ADDRESS, CONTROLLER_NS, Container, make_bridge, make_namespace, plug, run
from lab.progress import say
from lab.rootfs import ensure_rootfs

REPO = Path(__file__).resolve().parents[1]
DEPLOY_VENV = Path(os.environ.get("PIKAFKA_DEPLOY_VENV", REPO / ".venv-deploy"))
WORKDIR = Path("/var/lib/pikafka-lab/run")
# The lab deploys a snapshot of the tree taken at its start, so edits made while it runs change nothing.
SOURCE = WORKDIR / "src"
ANSIBLE_DIR = SOURCE / "ansible"
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.egg-info", "__pycache__", "data"
)
WHEELHOUSE_CACHE = Path.home() / ".cache/pikafka-wheelhouse"
TOPIC = "lab"
DEPLOY_TARGET_S = 180.0
SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
SENSOR_TOPIC = "readings"
MQTT_USER = "pikafka-bridge"  # the mqtt_bridge role's default user
MQTT_PORT = 1883


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str


class Lab:
    def __init__(self, hosts: int, bridge: bool = True) -> None:
        self.cleanup = Cleanup()
        self.hosts: list[Container] = []
        self.count = hosts
        self.bridge = bridge
        self.mqtt_password = secrets.token_urlsafe(18)
        self.results: list[StepResult] = []
        self.history = History(TOPIC)
        self.inventory = WORKDIR / "inventory.yml"
        self.key = WORKDIR / "id_lab"

    # ------------------------------------------------------------------------------------------------ plumbing

    @property
    def bootstrap(self) -> str:
        return f"coap://{self.hosts[0].address}:5680"  # the zookeeper runs on the first host

    def step(self, name: str, action: Callable[[], str]) -> bool:
        say(f"== {name}")
        started = time.monotonic()
        try:
            detail = action()
            ok = True
        except Exception as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
        took = time.monotonic() - started
        if not ok:
            self.diagnose()
        self.results.append(StepResult(name, ok, took, detail))
        say(f"   {'ok' if ok else 'FAILED'} in {took:.1f} s: {detail}")
        return ok

    def playbook(self, *extra: str, log_name: str) -> tuple[float, dict[str, dict[str, int]]]:
        log = WORKDIR / log_name
        env = {
            **os.environ,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "PATH": f"{DEPLOY_VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        }
        cmd = ["ip", "netns", "exec", CONTROLLER_NS, str(DEPLOY_VENV / "bin/ansible-playbook")]
        cmd += ["-i", str(self.inventory), "deploy.yml", *extra]
        started = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.run(cmd, cwd=ANSIBLE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        took = time.monotonic() - started
        text = log.read_text()
        recap = parse_recap(text)
        say(f"   ansible-playbook {' '.join(extra)} exited {proc.returncode} in {took:.1f} s (log {log})")
        for host, counts in sorted(recap.items()):
            say(f"     {host}: {counts}")
        if proc.returncode != 0:
            tail = "\n".join(text.splitlines()[-25:])
            raise RuntimeError(f"ansible-playbook exited {proc.returncode}:\n{tail}")
        return took, recap

    def diagnose(self) -> None:
        """After a failed step: what systemd and the journal say on every host (before teardown erases it)."""
        for host in self.hosts:
            if host.init_pid is None:
                continue
            units = ["pi-zookeeper.service", "pi-broker.service"]
            if self.bridge:
                units += ["mosquitto.service", "pi-mqtt-bridge.service", "pi-sensor.service"]
            for unit in units:
                out = host.exec(["journalctl", "-u", unit, "-n", "15", "--no-pager", "-o", "cat"], check=False)
                if out.strip():
                    say(f"   journal of {unit} on {host.name}:\n      " + "\n      ".join(out.splitlines()))

    def broker_host(self, broker_id: int) -> Container:
        return self.hosts[broker_id - 1]

    # The MQTT side reuses the cluster's hosts (no fourth container: nothing to boot or deploy twice): the bridge and
    # mosquitto on lab1 (the zookeeper's host, never powered off), the sensor on lab2 (the power cut takes lab3).
    @property
    def bridge_host(self) -> Container:
        return self.hosts[0]

    @property
    def sensor_host(self) -> Container:
        return self.hosts[1 % len(self.hosts)]

    # ------------------------------------------------------------------------------------------------ steps

    def boot(self) -> str:
        rootfs = ensure_rootfs()
        if WORKDIR.exists():
            shutil.rmtree(WORKDIR)
        WORKDIR.mkdir(parents=True)
        shutil.copytree(REPO, SOURCE, ignore=_NOT_SOURCE)
        self.cleanup.push("work directory", lambda: shutil.rmtree(WORKDIR, ignore_errors=True))
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pikafka-lab", "-f", str(self.key)])
        make_bridge(self.cleanup)
        make_namespace(CONTROLLER_NS, self.cleanup)
        plug(CONTROLLER_NS, 0, CONTROLLER_ADDRESS)
        self.hosts = [Container(f"lab{i}", i, rootfs, WORKDIR / f"lab{i}") for i in range(1, self.count + 1)]
        hosts_lines = [f"{h.address} {h.name}" for h in self.hosts]
        public_key = self.key.with_suffix(".pub").read_text()
        for host in self.hosts:
            host.create(self.cleanup, public_key, hosts_lines)
            host.boot()
        states = [f"{h.name}={h.wait_running()}" for h in self.hosts]
        return f"{self.count} containers booted ({', '.join(states)})"

    def write_inventory(self) -> None:
        lines = [
            "all:",
            "  vars:",
            "    ansible_user: root",
            f"    ansible_ssh_private_key_file: {self.key}",
            f"    ansible_ssh_common_args: {SSH_ARGS}",
            "  children:",
            "    zookeeper:",
            "      hosts:",
            f"        {self.hosts[0].name}:",
            "    brokers:",
            "      hosts:",
        ]
        for host in self.hosts:
            lines += [
                f"        {host.name}:",
                f"          ansible_host: {host.address}",
                f"          broker_id: {host.index}",
            ]
        if self.bridge:
            lines += [
                "    bridges:",
                "      hosts:",
                f"        {self.bridge_host.name}:",
                "          mqtt_bridge_install_mosquitto: true",
                f'          mqtt_bridge_mqtt_password: "{self.mqtt_password}"',
                "    sensors:",
                "      hosts:",
                f"        {self.sensor_host.name}:",
            ]
        self.inventory.write_text("\n".join(lines) + "\n")

    def first_deploy(self) -> str:
        self.write_inventory()
        # The controller namespace has no route anywhere: the wheelhouse is built (or found cached) here, where the
        # package index is reachable, by the same script the playbook runs; the playbook then finds it cached.
        arch = ["--arch", os.uname().machine, "--python", "3.11"]
        build = SOURCE / "ansible/roles/common/files/build_wheelhouse.py"
        out = run(
            [
                str(DEPLOY_VENV / "bin/python"),
                str(build),
                "--source",
                str(SOURCE),
                "--cache",
                str(WHEELHOUSE_CACHE),
                *arch,
            ],
            timeout=600,
        )
        say(f"   wheelhouse: {out.strip()}")
        took, _ = self.playbook(log_name="deploy-1.log")
        self.deploy_seconds = took
        verdict = "within" if took <= DEPLOY_TARGET_S else "OVER"
        return (
            f"first deploy of {self.count} fresh hosts took {took:.1f} s ({verdict} the {DEPLOY_TARGET_S:.0f} s target)"
        )

    def units_ready(self) -> str:
        details = []
        for host in self.hosts:
            units = ["pi-broker.service"] + (["pi-zookeeper.service"] if host is self.hosts[0] else [])
            for unit in units:
                state = wait_for(
                    f"{unit} on {host.name} to be active with a status line",
                    lambda h=host, u=unit: (
                        (s := unit_state(h, u))["ActiveState"] == "active"
                        and ("leader for" in s.get("StatusText", "") or "brokers alive" in s.get("StatusText", ""))
                        and s
                    ),
                    timeout=30,
                )
                assert state["Type"] == "notify"
                details.append(f"{host.name}/{unit.split('.')[0]}: {state['StatusText']!r}")
                score = host.exec(["systemd-analyze", "security", "--no-pager", unit], check=False)
                found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", score)
                if host is self.hosts[0]:
                    details.append(f"exposure {unit}={found.group(1) if found else '?'}")
                fields = host.exec(["journalctl", "-u", unit, "-o", "verbose", "-n", "200", "--no-pager"], check=False)
                if "pi-broker" in unit and "BROKER_ID=" not in fields:
                    raise RuntimeError(f"{host.name}: no BROKER_ID field in the journal of {unit}")
        return "; ".join(details)

    def produce_consume(self) -> str:
        first, second = self.hosts[0], self.hosts[1 % len(self.hosts)]
        topic_args = ["--partitions", "3", "--replication-factor", str(min(3, self.count))]
        first.exec(
            ["/opt/pikafka/venv/bin/pikafka", "topic", "create", TOPIC, "--bootstrap", self.bootstrap, *topic_args]
        )
        wait_for(
            "the new topic to be fully replicated", lambda: healthy(cluster_view(first, self.bootstrap), self.count), 60
        )
        self.history.produce(first, self.bootstrap, [f"a-{i}" for i in range(300)])
        verdict = self.history.verify(second, self.bootstrap)
        if not verdict.ok:
            raise RuntimeError(verdict.summary())
        return f"300 records produced on {first.name} (acks=all), all consumed on {second.name}"

    def kill_leader(self) -> str:
        view = cluster_view(self.hosts[0], self.bootstrap)
        leader = view["partitions"][0]["leader"]
        host = self.broker_host(leader)
        before = int(unit_state(host, "pi-broker.service")["NRestarts"])
        # On a cgroup-v1 host systemd may fail to signal the (empty) rest of the cgroup; the main process still dies,
        # which is what the restart check below verifies.
        host.exec(["systemctl", "kill", "-s", "SIGKILL", "pi-broker.service"], check=False)
        wait_for(
            f"systemd to restart pi-broker on {host.name}",
            lambda: (
                (s := unit_state(host, "pi-broker.service"))["ActiveState"] == "active" and int(s["NRestarts"]) > before
            ),
            timeout=60,
            interval=0.5,
        )
        other = next(h for h in self.hosts if h is not host)
        self.history.produce(other, self.bootstrap, [f"b-{i}" for i in range(200)])
        wait_for(
            "the restarted broker back in every ISR",
            lambda: healthy(cluster_view(other, self.bootstrap), self.count),
            90,
        )
        verdict = self.history.verify(other, self.bootstrap)
        if not verdict.ok:
            raise RuntimeError(verdict.summary())
        return (
            f"SIGKILL to pi-broker {leader} (leader of {TOPIC}-0) on {host.name}: restarted by systemd, "
            f"{len(self.history.acked)} acked records all consumed, nothing lost"
        )

    def power_cut(self) -> str:
        victim = self.hosts[-1]  # never the zookeeper's host
        survivor = self.hosts[0]
        victim.power_cut()
        started = time.monotonic()
        wait_for(
            "failover away from the dead host",
            lambda: (
                (v := cluster_view(survivor, self.bootstrap))
                and not any(b["alive"] for b in v["brokers"] if b["id"] == victim.index)
                and led_by_live(v)
            ),
            timeout=60,
        )
        failover = time.monotonic() - started
        self.history.produce(survivor, self.bootstrap, [f"c-{i}" for i in range(200)])
        verdict = self.history.verify(self.hosts[1], self.bootstrap)
        if not verdict.ok:
            raise RuntimeError(verdict.summary())
        victim.boot()
        victim.wait_running()
        wait_for(
            "the rebooted host back in every ISR",
            lambda: healthy(cluster_view(survivor, self.bootstrap), self.count),
            120,
        )
        return (
            f"{victim.name} powered off: leaders moved in {failover:.1f} s, {len(self.history.acked)} acked records "
            f"all consumed; rebooted, its broker back in every ISR"
        )

    def second_deploy(self) -> str:
        took, recap = self.playbook(log_name="deploy-2.log")
        changed = {host: counts.get("changed", -1) for host, counts in recap.items()}
        if any(n != 0 for n in changed.values()) or not changed:
            raise RuntimeError(f"second run changed something: {changed}")
        return f"changed=0 on every host ({took:.1f} s)"

    def rolling_restart(self) -> str:
        producer = BackgroundProducer(self.hosts[1 % len(self.hosts)], TOPIC, self.bootstrap, "d")
        before = {h.name: int(unit_state(h, "pi-broker.service")["MainPID"]) for h in self.hosts}
        try:
            took, _ = self.playbook("-e", "rolling_restart=true", log_name="deploy-rolling.log")
        finally:
            time.sleep(2)
            code, err = producer.finish()
        after = {h.name: int(unit_state(h, "pi-broker.service")["MainPID"]) for h in self.hosts}
        not_restarted = [name for name in before if before[name] == after[name]]
        if not_restarted:
            raise RuntimeError(f"brokers not restarted: {not_restarted}")
        if code != 0:
            raise RuntimeError(f"the producer failed (exit {code}): {err.strip()[-500:]}")
        self.history.acked.extend(v.encode() for v in producer.sent)
        verdict = self.history.verify(self.hosts[0], self.bootstrap)
        if not verdict.ok:
            raise RuntimeError(verdict.summary())
        return (
            f"{len(before)} brokers restarted one at a time in {took:.1f} s while {len(producer.sent)} records were "
            f"produced with acks=all: none failed, none lost ({len(self.history.acked)} in all)"
        )

    def sensor_to_mqtt(self) -> str:
        """Readings of pi-sensor (lab2) -> pikafka topic "readings" -> pi-mqtt-bridge (lab1) -> mosquitto (lab1)."""
        bridge, sensor = self.bridge_host, self.sensor_host
        for host, unit in (
            (bridge, "mosquitto.service"),
            (bridge, "pi-mqtt-bridge.service"),
            (sensor, "pi-sensor.service"),
        ):
            wait_for(
                f"{unit} on {host.name} to be active",
                lambda h=host, u=unit: unit_state(h, u)["ActiveState"] == "active",
                30,
            )
        bridge_status = wait_for(
            "pi-mqtt-bridge's STATUS to say connected and in its group",
            lambda: (
                (t := unit_state(bridge, "pi-mqtt-bridge.service").get("StatusText", "")).startswith("mqtt connected")
                and "not in the group" not in t
                and t
            ),
            60,
        )
        sensor_status = wait_for(
            "pi-sensor's STATUS to say the broker is reachable",
            lambda: "broker reachable" in (t := unit_state(sensor, "pi-sensor.service").get("StatusText", "")) and t,
            60,
        )
        status = bridge.exec(["systemctl", "status", "--no-pager", "pi-mqtt-bridge.service"], check=False)
        if 'Status: "mqtt connected' not in status:
            raise RuntimeError(f"systemctl status pi-mqtt-bridge shows no connected STATUS:\n{status}")
        # With the bridge's credentials, over the LAN address: readings published from now on.
        sub = [
            "mosquitto_sub",
            "-h",
            bridge.address,
            "-p",
            str(MQTT_PORT),
            "-u",
            MQTT_USER,
            "-P",
            self.mqtt_password,
            "-t",
            f"pikafka/{SENSOR_TOPIC}/{sensor.name}/#",
            "-v",
            "-C",
            "5",
            "-W",
            "60",
        ]
        out = bridge.exec(sub, timeout=90, check=False)  # -W: exits non-zero when fewer than -C arrived
        received: list[tuple[str, str]] = []
        for line in out.splitlines():
            topic, _, payload = line.partition(" ")
            senml = json.loads(payload)
            if not (isinstance(senml, list) and senml and str(senml[0].get("bn", "")).startswith(f"{sensor.name}:")):
                raise RuntimeError(f"not a SenML reading of {sensor.name} on {topic}: {payload[:200]}")
            received.append((topic, payload))
        if len(received) < 5:
            raise RuntimeError(f"mosquitto_sub got {len(received)} readings in 60 s: {out[-500:]}")
        # ... and each of them is a record of the pikafka topic (it went through the cluster, not around it).
        records = self.hosts[-1].exec(
            [
                PIKAFKA,
                "consume",
                SENSOR_TOPIC,
                "--bootstrap",
                self.bootstrap,
                "--from-beginning",
                "--timeout",
                "5",
                "--format",
                "json",
            ],
            timeout=180,
        )
        in_pikafka = {
            (str(r["key"]), str(r["value"])) for r in map(json.loads, filter(str.strip, records.splitlines()))
        }
        prefix = f"pikafka/{SENSOR_TOPIC}/"
        missing = [t for t, p in received if (t.removeprefix(prefix), p) not in in_pikafka]
        if missing:
            raise RuntimeError(f"{len(missing)} MQTT messages are not records of {SENSOR_TOPIC}: {missing[:3]}")
        # Not anonymous on the LAN: a client without credentials, from another host, is refused.
        other = self.hosts[-1] if self.hosts[-1] is not bridge else sensor
        assert other.init_pid is not None
        anonymous = ["mosquitto_sub", "-h", bridge.address, "-p", str(MQTT_PORT), "-t", "#", "-C", "1", "-W", "10"]
        anon = subprocess.run(
            ["nsenter", "-t", str(other.init_pid), "-a", *anonymous],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if anon.returncode == 0 or "not authori" not in anon.stderr:
            raise RuntimeError(
                f"an anonymous mosquitto_sub from {other.name} was not refused (exit {anon.returncode}): "
                f"{(anon.stdout + anon.stderr).strip()[:300]}"
            )
        refused = f"anonymous mosquitto_sub from {other.name} refused: {anon.stderr.strip().splitlines()[-1]!r}"
        return (
            f"{len(received)} SenML readings of {sensor.name} via pikafka {SENSOR_TOPIC!r} reached mosquitto_sub on "
            f"{bridge.name} (e.g. {received[0][0]}); bridge {bridge_status!r}; sensor {sensor_status!r}; {refused}"
        )

    # ------------------------------------------------------------------------------------------------ driver

    def run(self, keep_going: bool, hold: Path | None = None) -> bool:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("boot containers", self.boot),
            ("first deploy", self.first_deploy),
            ("units active, READY, STATUS", self.units_ready),
            ("produce on one host, consume on another", self.produce_consume),
            ("SIGKILL a leader's pi-broker", self.kill_leader),
            ("power off a whole host", self.power_cut),
            ("second deploy is idempotent", self.second_deploy),
            ("rolling restart under load", self.rolling_restart),
        ]
        if self.bridge:
            steps.append(("sensor -> pikafka -> bridge -> mosquitto_sub", self.sensor_to_mqtt))
        try:
            for name, action in steps:
                if not self.step(name, action) and (not keep_going or name in ("boot containers", "first deploy")):
                    break
        finally:
            if hold is not None:
                # For a person debugging: the lab stays up (nsenter into the containers) until the file is removed.
                hold.touch()
                say(f"== holding the lab until {hold} is removed")
                while hold.exists():
                    time.sleep(1)
            say("== teardown")
            started = time.monotonic()
            left = self.cleanup.run()
            self.results.append(
                StepResult(
                    "teardown", not left, time.monotonic() - started, f"could not undo: {left}" if left else "all gone"
                )
            )
        print_summary(self.results)
        return len(self.results) == len(steps) + 1 and all(r.ok for r in self.results)


def parse_recap(text: str) -> dict[str, dict[str, int]]:
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in text.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap and ":" in line and "=" in line:
            host, _, counts = line.partition(":")
            recap[host.strip()] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return recap


def print_summary(results: list[StepResult]) -> None:
    width = max(len(r.name) for r in results)
    print(f"\n{'step'.ljust(width)}  result  seconds  detail")
    for r in results:
        print(
            f"{r.name.ljust(width)}  {'ok' if r.ok else 'FAILED':6}  {r.seconds:7.1f}  {r.detail.splitlines()[0][:160]}"
        )
    for r in results:
        if not r.ok and "\n" in r.detail:
            print(f"\n--- {r.name}:\n{r.detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="boot a lab of systemd hosts, deploy pikafka, check it end to end")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--keep-going", action="store_true", help="run later checks after a failed one")
    parser.add_argument("--hold", type=Path, metavar="FILE", help="before teardown, wait until FILE is removed")
    parser.add_argument(
        "--no-bridge",
        action="store_true",
        help="leave out the MQTT side (no bridges/sensors groups, no mosquitto, pi-mqtt-bridge, pi-sensor step)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("lab: needs root (namespaces, mounts, containers)", file=sys.stderr)
        return 2
    missing = [
        t for t in ("debootstrap", "systemd-nspawn", "nsenter", "ip", "ssh", "ssh-keygen") if not shutil.which(t)
    ]
    if missing or not (DEPLOY_VENV / "bin/ansible-playbook").exists():
        print(f"lab: missing {missing or DEPLOY_VENV / 'bin/ansible-playbook'} (see `make lab`)", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout, Ctrl-C's cousin) unwinds through the teardown like any failure.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return 0 if Lab(args.hosts, bridge=not args.no_bridge).run(args.keep_going, args.hold) else 1


if __name__ == "__main__":
    sys.exit(main())
