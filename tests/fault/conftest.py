"""The standing fault suite: real processes on loopback, a fault injected under traffic.

Each scenario asserts the same three things, whatever the fault: nothing acknowledged is lost,
nothing served is unaudited, nothing is charged twice. The suite runs in `make test` (CI) in its
short form and in `make fault` at full length; `fault_seconds(short, full)` gives a scenario the
duration of the form being run, so one test body serves both.

    STRATUS_FAULT_FULL=1 pytest tests/fault   # what `make fault` runs
"""

from __future__ import annotations

import os

import pytest

FULL = os.environ.get("STRATUS_FAULT_FULL") == "1"


def fault_seconds(short: float, full: float) -> float:
    """A scenario's duration: `short` in CI, `full` in `make fault`."""
    return full if FULL else short


@pytest.fixture
def full_run() -> bool:
    return FULL
