"""Resilience primitives, pure stdlib and thread-safe, every clock injectable so tests never sleep.

* Deadline: one request's time budget, shared by every step of that request so that
  retries and per-step timeouts can never add up to more than the client will wait.
* CircuitBreaker: stops hammering a dependency that is down. After a cool-off it lets
  exactly ONE trial call through (a half-open breaker that lets every concurrent caller
  through re-floods the dependency at the very moment it is trying to recover).
* retry_with_backoff: bounded retries, exponential backoff with full jitter, and never a
  sleep that would outlive the request's deadline.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, ParamSpec, TypeVar

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class Deadline:
    """A request's time budget, measured on a monotonic clock."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        # Monotonic, never time.time(): an NTP step of the wall clock must not stretch or
        # cut a budget. Immutable after this line, hence safe to share between threads.
        self._clock = clock
        self._expires_at = clock() + timeout

    def remaining(self) -> float:
        """Seconds left in the budget, never negative."""
        # Clamped because many APIs read a negative timeout as "block forever".
        return max(0.0, self._expires_at - self._clock())

    def expired(self) -> bool:
        """True once the budget is used up."""
        return self.remaining() <= 0.0


class CircuitOpen(Exception):
    """Raised instead of calling the dependency while its circuit refuses calls."""

    def __init__(self, name: str) -> None:
        super().__init__(f"circuit {name!r} is open")
        self.name = name


class _Transition(NamedTuple):
    old: str
    new: str
    failures: int


class CircuitBreaker:
    """Fail fast while a dependency is down; probe it with one call at a time to detect recovery."""

    def __init__(
        self,
        name: str,
        threshold: int,
        reset_after: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        is_failure: Callable[[BaseException], bool] = lambda exc: True,
        on_transition: Callable[[str, str, str], None] | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        if reset_after < 0:
            raise ValueError("reset_after must not be negative")
        self.name = name
        self._threshold = threshold
        self._reset_after = reset_after
        self._clock = clock
        self._is_failure = is_failure
        self._on_transition = on_transition
        # One lock guards all mutable state. It is never held while fn runs (that would
        # serialise every call through the breaker) nor while logging or running the
        # callback (a slow handler would stall all callers; a re-entrant one would deadlock).
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0  # consecutive failures; any success resets it
        self._opened_at = 0.0
        self._trial_running = False
        # Bumped on every transition. A call's verdict only counts if no transition happened
        # while it ran: a slow success admitted before the circuit opened must not close it.
        self._epoch = 0

    @property
    def state(self) -> str:
        """CLOSED, OPEN or HALF_OPEN as last moved by a call.

        Deliberately no lazy move here: it keeps saying OPEN after reset_after has passed,
        until a call arrives and becomes the trial - so reading it never changes it.
        """
        with self._lock:
            return self._state

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run fn(*args, **kwargs) through the breaker, or raise CircuitOpen without calling it."""
        epoch, moved = self._admit()
        self._announce(moved)
        failed: bool | None = None  # None: no verdict on the dependency's health
        try:
            result = fn(*args, **kwargs)
            failed = False
            return result
        except Exception as exc:
            # An exception is_failure rejects (say, a "not found") still means the dependency
            # answered, so it counts as a success - and it propagates unchanged.
            failed = bool(self._is_failure(exc))
            raise
        finally:
            # finally, not except: the half-open trial slot must be freed whatever happened,
            # including KeyboardInterrupt/SystemExit (they say nothing about the dependency,
            # so failed stays None) or a buggy is_failure - else the circuit refuses forever.
            self._announce(self._settle(epoch, failed))

    def record_failure(self) -> None:
        """Count a failure seen outside call(): e.g. a connection cut mid-transaction by the watchdog."""
        with self._lock:
            moved = None
            if self._state != OPEN:
                self._failures += 1
                if self._state == HALF_OPEN or self._failures >= self._threshold:
                    self._opened_at = self._clock()
                    self._trial_running = False  # the epoch moves on: the trial's own verdict is stale
                    moved = self._move(OPEN)
        self._announce(moved)

    def _admit(self) -> tuple[int, _Transition | None]:
        with self._lock:
            if self._state == CLOSED:
                return self._epoch, None
            if self._state == OPEN:
                if self._clock() - self._opened_at < self._reset_after:
                    raise CircuitOpen(self.name)
                # Lazily, on the first call after the cool-off; that call becomes the trial.
                moved = self._move(HALF_OPEN)
                self._trial_running = True
                return self._epoch, moved
            # HALF_OPEN. Check-and-take under the same lock: exactly one caller wins the slot.
            if self._trial_running:
                raise CircuitOpen(self.name)
            self._trial_running = True
            return self._epoch, None

    def _settle(self, epoch: int, failed: bool | None) -> _Transition | None:
        with self._lock:
            if epoch != self._epoch:
                return None  # a stale verdict from before a transition; see _epoch
            trial = self._state == HALF_OPEN  # same epoch and half-open: this call is the trial
            if trial:
                self._trial_running = False
            if failed is None:
                return None  # no verdict; a half-open circuit lets the next caller probe
            if not failed:
                self._failures = 0
                return self._move(CLOSED) if trial else None
            self._failures += 1
            if trial or self._failures >= self._threshold:
                self._opened_at = self._clock()  # every opening starts a fresh cool-off
                return self._move(OPEN)
            return None

    def _move(self, new: str) -> _Transition:
        # Caller holds the lock. Returns the transition so it is announced after unlocking.
        old, self._state = self._state, new
        self._epoch += 1
        return _Transition(old, new, self._failures)

    def _announce(self, moved: _Transition | None) -> None:
        # Each transition is produced exactly once under the lock, so it is announced once.
        if moved is None:
            return
        if moved.new == OPEN:
            logger.warning("circuit %r opened after %d consecutive failures", self.name, moved.failures)
        elif moved.new == HALF_OPEN:
            logger.info("circuit %r half-open: letting one trial call through", self.name)
        else:
            logger.info("circuit %r closed: the dependency answered the trial call", self.name)
        if self._on_transition is not None:
            try:
                self._on_transition(self.name, moved.old, moved.new)
            except Exception:
                # An observer (metrics, alerting) must never break the call it observes.
                logger.exception("on_transition callback failed for circuit %r", self.name)


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
