"""A bounded load generator that records every request's outcome exactly (threads + http.client).

wrk reports totals; a fault scenario needs to know which request failed, when, and how:
refused (never accepted: fine during a shutdown), dropped (accepted, then no answer: a bug),
timeout, or an HTTP status with its headers.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# method, path, JSON body (or None)[, extra request headers]
RequestSpec = tuple[str, str, Any] | tuple[str, str, Any, dict[str, str]]


@dataclass(frozen=True)
class Outcome:
    """What happened to one request; times are time.monotonic() seconds."""

    started: float
    ended: float
    kind: str  # "response", "refused", "dropped", "timeout"
    status: int = 0
    retry_after: str | None = None
    body: bytes = b""

    @property
    def elapsed(self) -> float:
        return self.ended - self.started

    def json(self) -> Any:
        return json.loads(self.body)


def send(port: int, spec: RequestSpec, timeout: float) -> Outcome:
    """One request on a fresh connection, classified."""
    method, path, body = spec[0], spec[1], spec[2]
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        try:
            conn.connect()
        except ConnectionRefusedError:
            return Outcome(started, time.monotonic(), "refused")
        except TimeoutError:
            return Outcome(started, time.monotonic(), "timeout")
        # From here the kernel has accepted the connection: it is owed an answer.
        headers = {"Connection": "close", **(spec[3] if len(spec) > 3 else {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError:
            return Outcome(started, time.monotonic(), "timeout")
        except (http.client.HTTPException, ConnectionError, OSError):
            return Outcome(started, time.monotonic(), "dropped")
        return Outcome(
            started,
            time.monotonic(),
            "response",
            response.status,
            response.getheader("Retry-After"),
            data if response.status != 200 or method != "GET" else b"",
        )
    finally:
        conn.close()


class Load:
    """`threads` closed-loop clients until stop(), or `seconds`, or `max_requests`, whichever is first.

    With `pace`, each thread starts a request at most every `pace` seconds (a client polling on a
    timer); after a slow answer it sends the next one at once, without a burst to catch up.
    """

    def __init__(
        self,
        port: int,
        make: Callable[[int], RequestSpec],
        *,
        threads: int = 8,
        seconds: float = 60,
        max_requests: int = 200_000,
        timeout: float = 10.0,
        pace: float | None = None,
    ):
        self.port = port
        self.pace = pace
        self.make = make
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._count = 0
        self._max = max_requests
        self._until = time.monotonic() + seconds
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(threads)
        ]

    def _next(self) -> int | None:
        with self._lock:
            if (
                self._stop.is_set()
                or self._count >= self._max
                or time.monotonic() >= self._until
            ):
                return None
            self._count += 1
            return self._count

    def _run(self) -> None:
        next_at = time.monotonic()
        while (n := self._next()) is not None:
            outcome = send(self.port, self.make(n), self.timeout)
            with self._lock:
                self.outcomes.append(outcome)
            if self.pace:
                next_at = max(next_at + self.pace, time.monotonic())
                self._stop.wait(next_at - time.monotonic())
            elif outcome.kind == "refused":
                time.sleep(0.01)  # nobody listening: do not spin

    def snapshot(self) -> list[Outcome]:
        """The outcomes so far, in start order, while the load goes on (for polling)."""
        with self._lock:
            return sorted(self.outcomes, key=lambda o: o.started)

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        """Stop issuing requests, wait for those in flight, return every outcome in start order."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return sorted(self.outcomes, key=lambda o: o.started)


def fire_at_once(port: int, specs: list[RequestSpec], timeout: float = 15.0) -> list[Outcome]:
    """Send every request at the same instant (one thread each, released by a barrier); return the outcomes."""
    barrier = threading.Barrier(len(specs))
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def one(spec: RequestSpec) -> None:
        barrier.wait(10)
        outcome = send(port, spec, timeout=timeout)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=one, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 15)
    return outcomes


def count(outcomes: list[Outcome], pred: Callable[[Outcome], bool]) -> int:
    return sum(1 for o in outcomes if pred(o))
