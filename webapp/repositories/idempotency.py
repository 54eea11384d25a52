"""IdempotencyRepository: remembered responses for retried POST /orders."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from webapp.repositories.base import Repository


class IdempotencyRepository(Repository):
    """Claim keys, look up stored responses, store new ones — all in the caller's transaction."""

    def try_claim(self, key: str) -> bool:
        """Take a transaction-scoped advisory lock on key; False when another request holds it."""
        # The lock (not a row) marks "in flight": it vanishes with the transaction, even on crash.
        # try_, never the blocking form: a duplicate gets its 409 at once instead of holding a
        # worker and a connection until the first one commits. Keys share Postgres' 64-bit
        # advisory-lock space (with migrate's lock too); a hash collision costs one spurious 409.
        row = self._one("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
        return bool(row and row[0])

    def find(self, key: str, retention_hours: int) -> tuple[str, int, dict[str, Any]] | None:
        """Return (request_hash, status_code, response) stored for key within retention, or None."""
        # An expired key counts as absent: the request is new again, and save() takes the row over.
        row = self._one(
            "SELECT request_hash, status_code, response FROM idempotency_keys "
            "WHERE key = %s AND created_at > now() - make_interval(hours => %s)",
            (key, retention_hours),
        )
        return (row[0], row[1], row[2]) if row else None

    def save(self, key: str, request_hash: str, status_code: int, response: dict[str, Any]) -> None:
        """Store the response for key (replacing an expired one) in the current transaction."""
        self._execute(
            "INSERT INTO idempotency_keys (key, request_hash, status_code, response) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET request_hash = EXCLUDED.request_hash, "
            "status_code = EXCLUDED.status_code, response = EXCLUDED.response, created_at = now()",
            (key, request_hash, status_code, Jsonb(response)),
        )

    def delete_expired(self, retention_hours: int) -> int:
        """Delete keys older than the retention; return how many."""
        return self._execute(
            "DELETE FROM idempotency_keys WHERE created_at <= now() - make_interval(hours => %s)",
            (retention_hours,),
        )
