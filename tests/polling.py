"""Wait for a condition instead of guessing with a sleep: the one polling helper of the suite (and bench)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """True once predicate() holds, checked every `interval` s; False if it did not within timeout s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
