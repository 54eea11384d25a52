"""One `webapp migrate` at a time: a lease row that a heartbeat renews and a crashed run gives up by expiry.

Why not an advisory lock: a session lock lives on one server connection, which a transaction pooler
hands to other clients between transactions (and a no-transaction migration has no transaction to
hold a transaction-scoped one). Why not a plain lock row: a run killed half-way would hold it until
someone removed it by hand, blocking every later release. A lease expires `seconds` after its last
renewal, and its holder renews it from a thread of its own while the migrations run.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another run took the lease: this one stalled past its expiry and must stop."""


class Lease:
    """The row in schema_migrations_lease, claimed by one run (holder) until it expires."""

    def __init__(self, database_url: str, seconds: float = 30.0):
        self._url = database_url
        self._seconds = seconds
        self.holder = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._lost = threading.Event()

    @contextmanager
    def held(self, wait: float) -> Iterator[Lease]:
        """Claim the lease (waiting up to `wait` s for another run to finish), renew it, give it back."""
        with self._connect() as conn:
            self._claim(conn, wait)
            heartbeat = threading.Thread(target=self._renew, name="migrate-lease", daemon=True)
            heartbeat.start()
            try:
                yield self
            finally:
                self._stop.set()
                heartbeat.join(timeout=5)
                conn.execute("DELETE FROM schema_migrations_lease WHERE holder = %s", (self.holder,))

    def check(self) -> None:
        """Raise LeaseLost when a renewal found the lease taken over."""
        if self._lost.is_set():
            raise LeaseLost("the migration lease expired and another run took it over; stopping")

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self._url, autocommit=True, prepare_threshold=None, connect_timeout=10,
                               application_name="webapp-migrate-lease")

    def _claim(self, conn: psycopg.Connection[tuple[object, ...]], wait: float) -> None:
        give_up = time.monotonic() + wait
        logged = False
        while True:
            row = conn.execute(
                "INSERT INTO schema_migrations_lease (holder, expires_at)"
                " VALUES (%s, now() + make_interval(secs => %s)) ON CONFLICT (id) DO UPDATE"
                " SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at"
                " WHERE schema_migrations_lease.expires_at < now() RETURNING holder",
                (self.holder, self._seconds),
            ).fetchone()
            if row is not None:
                return
            if time.monotonic() >= give_up:
                raise TimeoutError(f"another `webapp migrate` held the migration lease for over {wait:g} s")
            if not logged:
                log.info("another migrate run holds the lease; waiting for it", extra={"wait_s": wait})
                logged = True
            time.sleep(0.2 + random.random() * 0.3)  # jittered: two waiting runs do not poll in step

    def _renew(self) -> None:
        try:
            with self._connect() as conn:
                while not self._stop.wait(self._seconds / 3):
                    renewed = conn.execute(
                        "UPDATE schema_migrations_lease SET expires_at = now() + make_interval(secs => %s)"
                        " WHERE holder = %s", (self._seconds, self.holder)).rowcount
                    if not renewed:
                        self._lost.set()
                        return
        except psycopg.Error:
            # Renewals stopped: the lease expires on its own; the run notices at its next check.
            log.warning("could not renew the migration lease", exc_info=True)
            self._lost.set()
