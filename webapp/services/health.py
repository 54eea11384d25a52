"""HealthService: check every dependency concurrently, each under its own timeout."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

log = logging.getLogger(__name__)

Check = Callable[[float], None]  # raises when the dependency is unwell; gets its timeout in seconds

OK, DISABLED = "ok", "disabled"


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
        """From now on readiness answers shutting_down (called on SIGTERM)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def check(self) -> tuple[bool, dict[str, str]]:
        """Run every check at once; return (healthy, {name: "ok" | "disabled" | short reason}).

        Unhealthy only when a required check fails; an optional one (the cache) just degrades.
        """
        checks = {**self._required, **{k: v for k, v in self._optional.items() if v is not None}}
        futures = {name: self._executor.submit(check, self._timeout) for name, check in checks.items()}
        results = {name: DISABLED for name, check in self._optional.items() if check is None}
        for name, future in futures.items():
            try:
                # Each check got the timeout itself; this bound is for a check that ignores it.
                future.result(timeout=self._timeout + 0.1)
                results[name] = OK
            except FutureTimeout:
                results[name] = "timeout"
            except Exception as exc:  # a probe reports; it never raises
                results[name] = _reason(exc)
                log.debug("health check %s failed", name, exc_info=exc)
        healthy = all(results[name] == OK for name in self._required)
        return healthy, results

    def close(self) -> None:
        """Stop the probe threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _reason(exc: Exception) -> str:
    # Only the exception's class: its message may carry a host, a DSN, or worse.
    return f"unavailable ({type(exc).__name__})"
