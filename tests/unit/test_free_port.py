"""The tests' port picker: ports that several services of one fixture get before any of them binds must differ."""

from __future__ import annotations

import sys

from tests.conftest import free_port


def test_ports_picked_before_any_is_bound_are_all_different() -> None:
    # 300 picks from the ~20,000 candidates would repeat one about twice on average if picks were independent.
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_the_fixtures_and_the_tests_share_one_picker() -> None:
    # If pytest loaded conftest.py under a second module name, its fixtures would keep a separate record of the
    # ports handed out and could hand out a test's port again.
    pickers = [name for name, module in sys.modules.items() if hasattr(module, "free_port") and "conftest" in name]
    assert pickers == ["tests.conftest"]
