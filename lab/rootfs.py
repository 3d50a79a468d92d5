"""The cached Debian bookworm root filesystem every lab container boots from (read-only, under an overlay)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from lab.progress import say

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a freshly installed Raspberry Pi OS Lite (bookworm) has that matters here: systemd, python3 with venv and
# systemd bindings, an ssh server. Nothing of pikafka: ansible installs that.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "python3-systemd",
    "python3-apt",  # for ansible's apt module (Raspberry Pi OS has it too)
    "openssh-server",
    "iproute2",
    "procps",
    "sudo",
    # The bridge host's MQTT broker and the lab's mosquitto_sub: the containers have no mirror, so the mqtt_bridge
    # role's apt task must find them installed.
    "mosquitto",
    "mosquitto-clients",
)
CACHE_DIR = Path("/var/cache/pikafka-lab")


def rootfs_key() -> str:
    return hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(PACKAGES)} v1".encode()).hexdigest()[:12]


def ensure_rootfs(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached rootfs, built by debootstrap on first use (about a minute); never modified after that."""
    target = cache_dir / f"{SUITE}-{rootfs_key()}"
    if (target / ".complete").exists():
        say(f"rootfs cached at {target}")
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = target.with_name(target.name + ".building")
    if building.exists():
        shutil.rmtree(building)
    say(f"debootstrap {SUITE} minbase into {building}")
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(building),
            MIRROR,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    _prepare(building)
    (building / ".complete").write_text("ok\n")
    building.rename(target)
    return target


def _prepare(root: Path) -> None:
    """Make the image boot quickly and headless in a container; host-specific bits are added per container."""
    for unit in ("systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer"):
        (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
    # ssh host keys are generated per container at first boot (ssh.service's ExecStartPre would otherwise fail).
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    subprocess.run(["chroot", str(root), "apt-get", "clean"], check=True)
