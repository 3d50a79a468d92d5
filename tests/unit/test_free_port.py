"""The tests' port picker: ports that several services of one fixture get before any of them binds must differ."""

from __future__ import annotations

import sys

from tests.ports import free_port


def test_ports_picked_before_any_is_bound_are_all_different() -> None:
    # 300 picks from the ~20,000 candidates would repeat one about twice on average if picks were independent.
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_the_fixtures_the_tests_and_the_benchmarks_share_one_record() -> None:
    # If pytest loaded the picker's module under a second name, that copy would keep its own record of the ports
    # handed out and could hand out a port again.
    records = [name for name, module in sys.modules.items() if hasattr(module, "_handed_out")]
    assert records == ["tests.ports"]
