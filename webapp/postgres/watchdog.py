"""The client side of a deadline: a connection whose server stays silent past it is cut off.

statement_timeout is enforced by Postgres, so it needs a Postgres that can still answer. A frozen
VM, a paused pooler or a dead switch answers nothing, and psycopg would wait on the socket for
as long as TCP lets it (minutes). This watchdog is the equivalent of Go's
`QueryContext(ctx, ...)` abandoning the query when ctx expires.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# How long after the request's deadline a silent server is given before its connection is cut.
# Postgres enforces the deadline itself (statement_timeout) and answers QueryCanceled at the
# deadline; the grace lets that answer travel back before we assume nobody is there.
GRACE_SECONDS = 0.5


class Watchdog:
    """One thread per pool: shuts down the socket of each connection still waiting past its time.

    arm() and disarm() bracket every transaction; they cost two lock round trips, and the thread
    sleeps until the earliest armed time, so it wakes about once per deadline, not per request.
    Why shutdown() and not close(): libpq still owns the file descriptor. shutdown() makes its
    pending read return at once with "server closed the connection", the connection turns BAD,
    and the pool discards it on return; the descriptor is closed by libpq, never reused under it.
    """

    def __init__(self, grace: float = GRACE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.grace = grace
        self._clock = clock
        self._wake = threading.Condition(threading.Lock())
        self._armed: dict[Any, tuple[float, int]] = {}  # connection -> (cut-off time, socket fd)
        self._cut: set[Any] = set()
        self._next_check = float("inf")
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, conn: Any, fileno: int, seconds: float) -> None:
        """Cut conn's socket if it is still armed `seconds` (+ grace) from now."""
        at = self._clock() + seconds + self.grace
        with self._wake:
            self._armed[conn] = (at, fileno)
            if self._thread is None and not self._closed:
                # Started on first use, never at import or before gunicorn forks the worker.
                self._thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
                self._thread.start()
            if at < self._next_check:
                self._wake.notify()

    def disarm(self, conn: Any) -> bool:
        """Stop watching conn; True when it was cut (the caller must not reuse it)."""
        with self._wake:
            self._armed.pop(conn, None)
            if conn in self._cut:
                self._cut.discard(conn)
                return True
            return False

    def close(self) -> None:
        """Stop the thread (worker exit)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=1)

    def _run(self) -> None:
        with self._wake:
            while not self._closed:
                now = self._clock()
                for conn, (at, fileno) in list(self._armed.items()):
                    if at <= now:
                        del self._armed[conn]
                        self._cut.add(conn)
                        _shutdown(fileno)
                self._next_check = min((at for at, _ in self._armed.values()), default=float("inf"))
                self._wake.wait(None if self._next_check == float("inf") else self._next_check - now)


def _shutdown(fileno: int) -> None:
    """Shut down the socket behind fileno without closing libpq's descriptor."""
    try:
        # A duplicate descriptor: closing it leaves libpq's untouched; shutdown acts on the socket.
        with socket.socket(fileno=os.dup(fileno)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return  # already gone
    log.warning("database silent past the deadline; connection cut", extra={"grace_s": GRACE_SECONDS})
