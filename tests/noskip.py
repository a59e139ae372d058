"""A pytest plugin: a test that skips itself fails instead.

The suite has no optional parts: a missing PostgreSQL, Redis or browser fails the run
(each fixture says what to start or install). So a skip, raised by a test, a fixture or a
library under them (a property-test library that finds nothing to generate, say), can only
hide a test that did not run; CI would still pass. Loaded by tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        why = report.longrepr
        if isinstance(why, tuple):  # (file, line, "Skipped: reason")
            why = f"{why[0]}:{why[1]}: {why[2]}"
        report.outcome = "failed"  # in a fixture's set-up: reported as an error
        report.longrepr = f"{item.nodeid} skipped, which this suite does not allow ({why})"
