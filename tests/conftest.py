"""Suite-wide collection order: the ``slow`` tests first.

With pytest-xdist the workers take tests in collection order, so a long test
collected late (tests/test_benchmarks.py comes after tests/integration/) would
run alone at the end while the other workers are idle. The relative order of
the other tests is unchanged; so is the set of tests.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
