#!/usr/bin/env python3
"""Build (once, then cached) the offline wheelhouse for one target platform, on the controller.

    build_wheelhouse.py --source PROJECT_DIR --cache DIR --arch aarch64 --python 3.11

Prints one JSON line: {"digest", "path", "changed"}. The digest covers the project's sources and pyproject.toml,
so an unchanged tree maps to the same wheelhouse and nothing is rebuilt, copied or restarted. The pikafka wheel is
pure Python; its dependencies are fetched for the target: `pip wheel` when the target is the controller's own
platform, else `pip download --only-binary=:all: --platform ...` (add `--extra-index-url https://www.piwheels.org/simple`
through PIP_EXTRA_INDEX_URL for armv7l, where PyPI has few wheels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = ("pikafka", "pi_broker", "pi_zookeeper", "clients")
PLATFORMS = {
    "x86_64": ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "linux_x86_64"],
    "aarch64": ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "linux_aarch64"],
    "armv7l": ["manylinux2014_armv7l", "manylinux_2_17_armv7l", "linux_armv7l"],
}


def source_digest(source: Path) -> str:
    h = hashlib.sha256()
    files = [source / "pyproject.toml", *sorted(p for pkg in PACKAGES for p in (source / pkg).rglob("*.py"))]
    for path in files:
        h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build(source: Path, cache: Path, arch: str, python: str) -> dict[str, object]:
    digest = source_digest(source)
    target = cache / digest / f"{arch}-cp{python.replace('.', '')}"
    if (target / ".complete").exists():
        return {"digest": digest, "path": str(target), "changed": False}
    work = Path(tempfile.mkdtemp(prefix="wheelhouse-", dir=cache))
    try:
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
        subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(work), str(source)], check=True)
        (wheel,) = work.glob("pikafka-*.whl")
        native = arch == platform.machine() and python == f"{sys.version_info.major}.{sys.version_info.minor}"
        if native:
            subprocess.run([*pip, "wheel", "--wheel-dir", str(work), str(wheel)], check=True)
        else:
            tags = [arg for tag in PLATFORMS[arch] for arg in ("--platform", tag)]
            download = [*pip, "download", "--only-binary=:all:", *tags, "--python-version", python]
            subprocess.run([*download, "--implementation", "cp", "--dest", str(work), str(wheel)], check=True)
        (work / ".complete").write_text(digest + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"digest": digest, "path": str(target), "changed": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--arch", required=True, choices=sorted(PLATFORMS))
    parser.add_argument("--python", required=True, help="the target's Python version, e.g. 3.11")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(json.dumps(build(args.source.resolve(), args.cache, args.arch, args.python)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
