"""retry_with_backoff: bounded retries, exponential backoff with full jitter, and never a sleep
that would outlive the request's deadline. Pure stdlib; sleep and randomness are injectable."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from webapp.resilience import Deadline

T = TypeVar("T")


class RetryError(Exception):
    """Raised when retry_with_backoff gives up; __cause__ is the last error."""

    def __init__(self, attempts: int, last_error: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last_error!r}")
        self.attempts = attempts
        self.last_error = last_error


def _as_predicate(
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool],
) -> Callable[[BaseException], bool]:
    # Trap: an exception class is itself callable, and ConnectionError(exc) is a truthy
    # instance - used as a predicate it would retry everything. Treat a bare class as a type.
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if isinstance(retry_on, tuple):
        types = retry_on
        return lambda exc: isinstance(exc, types)
    return retry_on


def retry_with_backoff(
    fn: Callable[[], T],
    *,
    attempts: int,
    base: float,
    max_delay: float,
    deadline: Deadline | None = None,
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool],
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
    before_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Call fn() up to `attempts` times, sleeping with full-jitter backoff between tries.

    before_retry(n, exc) runs after failed attempt n, only when attempt n+1 will happen.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    should_retry = _as_predicate(retry_on)
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            # Only Exception: KeyboardInterrupt/SystemExit (a worker being shut down) are
            # never retried. Non-retryable errors (bad input, 4xx) escape untouched.
            if not should_retry(exc):
                raise
            last_error: Exception = exc
        if attempt >= attempts:
            break
        # Full jitter: a random point in [0, cap) spreads out clients that failed together,
        # so they do not come back in lockstep and knock the dependency over again.
        delay = rand() * min(max_delay, base * 2 ** (attempt - 1))
        # >=, not >: waking with zero budget left would leave no time for the attempt itself.
        if deadline is not None and delay >= deadline.remaining():
            break
        if before_retry is not None:
            # Before sleeping: e.g. roll back now, so row locks are not held through the wait.
            before_retry(attempt, last_error)
        sleep(delay)
    raise RetryError(attempt, last_error) from last_error
