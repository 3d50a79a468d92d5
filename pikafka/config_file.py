"""What every service's configuration shares: the TOML file named by --config, and flags that override it."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator, and the service exits 2."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def flag_overrides(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The named settings given on the command line (argparse leaves the others None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}
