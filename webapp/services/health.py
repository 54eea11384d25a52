"""HealthService: check every dependency concurrently, each under its own timeout."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

from webapp.errors import DomainError

log = logging.getLogger(__name__)

Check = Callable[[float], None]  # raises when the dependency is unwell; gets its timeout in seconds

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
        futures = {name: self._executor.submit(check, self._timeout) for name, check in checks.items()}
        # One deadline for all: waiting on each future in turn could add their timeouts up.
        wait(futures.values(), timeout=self._timeout + _GRACE_SECONDS)
        results = {name: DISABLED for name, check in self._optional.items() if check is None}
        for name, future in futures.items():
            if not future.done():
                future.cancel()  # still queued behind a hung check: do not run it late
                results[name] = TIMEOUT
            elif (exc := future.exception()) is not None:
                results[name] = reason(exc)
                log.debug("health check %s failed", name, exc_info=exc)
            else:
                results[name] = OK
        healthy = all(results[name] == OK for name in self._required)
        return healthy, results

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
