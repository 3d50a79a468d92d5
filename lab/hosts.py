"""Network namespaces, overlay root filesystems and systemd-nspawn containers: the lab's "Pis".

Layout (all addresses private, in namespaces of their own; nothing is routed off the machine):

    namespace pkl-br    bridge br0
    namespace pkl-ctl   eth0 10.213.77.1/24   the controller: ansible-playbook and ssh run here
    namespace pkl-h1    eth0 10.213.77.11/24  container lab1 (booted with systemd-nspawn --boot)
    namespace pkl-h2    eth0 10.213.77.12/24  container lab2 ...

Every container boots the cached rootfs read-only under an overlay whose upper layer is its own, so the cache stays
clean and a powered-off container boots again with its disk as it was.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.cleanup import Cleanup
from lab.progress import say

SUBNET = "10.213.77"
BRIDGE_NS = "pkl-br"
CONTROLLER_NS = "pkl-ctl"
CONTROLLER_ADDRESS = f"{SUBNET}.1"


def run(cmd: list[str], *, check: bool = True, timeout: float = 120, input: str | None = None) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}: {result.stderr.strip() or result.stdout}")
    return result.stdout


def make_namespace(name: str, cleanup: Cleanup) -> None:
    if Path(f"/run/netns/{name}").exists():
        run(["ip", "netns", "del", name])  # left over from a run that could not clean up
    run(["ip", "netns", "add", name])
    cleanup.push(f"namespace {name}", lambda: _delete_namespace(name))
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def _delete_namespace(name: str) -> None:
    run(["ip", "netns", "del", name])


def make_bridge(cleanup: Cleanup) -> None:
    make_namespace(BRIDGE_NS, cleanup)
    run(["ip", "-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge"])
    run(["ip", "-n", BRIDGE_NS, "link", "set", "br0", "up"])


def plug(namespace: str, index: int, address: str) -> None:
    """A veth pair: one end on the bridge, the other as eth0 with `address` in `namespace`."""
    outer, inner = f"pkv{index}", f"pke{index}"
    run(["ip", "link", "add", outer, "netns", BRIDGE_NS, "type", "veth", "peer", "name", inner, "netns", namespace])
    run(["ip", "-n", BRIDGE_NS, "link", "set", outer, "master", "br0", "up"])
    run(["ip", "-n", namespace, "link", "set", inner, "name", "eth0"])
    run(["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0"])
    run(["ip", "-n", namespace, "link", "set", "eth0", "up"])


@dataclass
class Container:
    name: str  # lab1, lab2, ...
    index: int
    rootfs: Path
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    init_pid: int | None = None
    boots: int = 0
    log_files: list[Path] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return f"pkl-h{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{10 + self.index}"

    @property
    def merged(self) -> Path:
        return self.workdir / "merged"

    def create(self, cleanup: Cleanup, authorized_key: str, hosts_lines: list[str]) -> None:
        make_namespace(self.namespace, cleanup)
        plug(self.namespace, self.index, self.address)
        for sub in ("upper", "work", "merged"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.rootfs},upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}",
                str(self.merged),
            ]
        )
        cleanup.push(f"overlay of {self.name}", self._unmount)
        cleanup.push(f"container {self.name}", self.stop)
        root = self.merged
        (root / "etc/hostname").write_text(self.name + "\n")
        (root / "etc/hosts").write_text("127.0.0.1 localhost\n" + "\n".join(hosts_lines) + "\n")
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(authorized_key)
        (ssh_dir / "authorized_keys").chmod(0o600)
        run(["chroot", str(root), "ssh-keygen", "-A"])

    def boot(self) -> None:
        log = self.workdir / f"console-{self.boots}.log"
        self.log_files.append(log)
        self.boots += 1
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--console=read-only",
                    f"--network-namespace-path=/run/netns/{self.namespace}",
                    f"--machine={self.name}",
                    "-D",
                    str(self.merged),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.init_pid = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.init_pid is None:
            children = run(["ps", "-o", "pid=,comm=", "--ppid", str(self.process.pid)], check=False).split()
            if len(children) >= 2 and children[1] == "systemd":
                self.init_pid = int(children[0])
            elif self.process.poll() is not None:
                raise RuntimeError(f"{self.name}: systemd-nspawn exited {self.process.returncode}, see {log}")
            else:
                time.sleep(0.1)
        if self.init_pid is None:
            raise RuntimeError(f"{self.name}: no init process after 30 s, see {log}")

    def wait_running(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.exec(["systemctl", "is-system-running"], check=False).strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: system state {state!r} after {timeout} s")

    def exec(self, cmd: list[str], *, check: bool = True, timeout: float = 120, input: str | None = None) -> str:
        """Run a command inside the container (all of its namespaces, like `machinectl shell`)."""
        assert self.init_pid is not None, f"{self.name} is not running"
        return run(["nsenter", "-t", str(self.init_pid), "-a", *cmd], check=check, timeout=timeout, input=input)

    def power_cut(self) -> None:
        """Kill the container's init with SIGKILL: every process in it dies at once, like pulling the plug."""
        assert self.init_pid is not None and self.process is not None
        subprocess.run(["kill", "-KILL", str(self.init_pid)], check=False)
        self.process.wait(timeout=30)
        self.process, self.init_pid = None, None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not power off in 20 s, killing it")
            if self.init_pid is not None:
                subprocess.run(["kill", "-KILL", str(self.init_pid)], check=False)
            self.process.kill()
            self.process.wait(timeout=10)
        self.process, self.init_pid = None, None

    def _unmount(self) -> None:
        run(["umount", str(self.merged)])
        shutil.rmtree(self.workdir, ignore_errors=True)
