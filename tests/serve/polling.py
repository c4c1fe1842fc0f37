"""Polling helper shared by the daemon tests.

A module of its own rather than ``conftest``: several test directories have a ``conftest.py``, and
``from conftest import ...`` picks whichever was imported first when they run in one session.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass (then fail, saying what)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
