"""HealthService: check every dependency concurrently, each under its own timeout, never piling up."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

from webapp.domain.errors import DomainError
from webapp.services.ports import Check

log = logging.getLogger(__name__)

OK, DISABLED, TIMEOUT = "ok", "disabled", "timeout"
# A check that honours its timeout returns within it; this much more covers thread start-up.
_GRACE_SECONDS = 0.1


class HealthService:
    """Readiness of the process: its required and optional dependencies, and whether it is stopping."""

    def __init__(self, required: dict[str, Check], optional: dict[str, Check | None], timeout: float):
        self._required = required
        self._optional = optional
        self._timeout = timeout
        # A small pool of its own: a probe never waits behind request work, and never grows.
        self._executor = ThreadPoolExecutor(max_workers=len(required) + len(optional), thread_name_prefix="health")
        self._in_flight: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def mark_stopping(self) -> None:
        """From now on readiness answers shutting_down (called on SIGTERM, inside a signal handler)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def check(self) -> tuple[bool, dict[str, str]]:
        """Run every check at once; return (healthy, {name: "ok" | "disabled" | "timeout" | short reason}).

        Unhealthy only when a required check fails; an optional one (the cache) just degrades.
        The whole call takes at most the timeout (plus a little), however many checks hang.
        """
        checks = {**self._required, **{k: v for k, v in self._optional.items() if v is not None}}
        futures = {name: self._start(name, check) for name, check in checks.items()}
        # One deadline for all: waiting on each future in turn could add their timeouts up.
        wait(futures.values(), timeout=self._timeout + _GRACE_SECONDS)
        results = {name: DISABLED for name, check in self._optional.items() if check is None}
        for name, future in futures.items():
            if not future.done():
                results[name] = TIMEOUT
            elif (exc := future.exception()) is not None:
                results[name] = reason(exc)
                log.debug("health check %s failed", name, exc_info=exc)
            else:
                results[name] = OK
        healthy = all(results[name] == OK for name in self._required)
        return healthy, results

    def _start(self, name: str, check: Check) -> Future[None]:
        """The check's future: a new one, or the one still running from an earlier probe.

        One check in flight per dependency: probes of a hung database must not stack up threads
        and connections; they wait on (and report) the check already under way.
        """
        with self._lock:
            running = self._in_flight.get(name)
            if running is not None and not running.done():
                return running
            future = self._executor.submit(check, self._timeout)
            self._in_flight[name] = future
            return future

    def close(self) -> None:
        """Stop the probe threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def reason(exc: BaseException) -> str:
    """A short, safe reason: our own message for domain errors, else only the exception's class.

    A driver's message may carry a host, a DSN or worse; ours never do.
    """
    if isinstance(exc, DomainError):
        return f"unavailable: {exc.message}"
    return f"unavailable: {type(exc).__name__}"
