"""wait_for: poll until something holds, or fail saying what was awaited. Shared by the
tests that watch jobs, sweeps and ranks from outside (tests/ is on sys.path through its
conftest.py)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    """predicate()'s first truthy value within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
