"""IdempotencyRepository: which order each (user, Idempotency-Key) already placed."""

from __future__ import annotations

from webapp.repositories.base import Repository


class IdempotencyRepository(Repository):
    """Claim keys, look up the orders they placed, remember new ones — all in the caller's transaction."""

    def try_claim(self, user_id: int, key: str) -> bool:
        """Take a transaction-scoped advisory lock on (user, key); False when another request holds it."""
        # The lock (not a row) marks "in flight": it vanishes with the transaction, even on crash,
        # and, being transaction-scoped, it is safe behind a transaction-mode pooler. try_, never
        # the blocking form: a duplicate gets its 409 at once instead of holding a worker until
        # the first one commits. A 64-bit hash collision costs one spurious 409.
        row = self._one("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, %s))", (key, user_id))
        return bool(row and row[0])

    def find(self, user_id: int, key: str, retention_hours: int) -> tuple[str, int] | None:
        """(request_hash, order_id) stored for the user's key within retention, or None."""
        # An expired key counts as absent: the request is new again, and save() takes the row over.
        row = self._one(
            "SELECT request_hash, order_id FROM idempotency_keys "
            "WHERE user_id = %s AND key = %s AND created_at > now() - make_interval(hours => %s)",
            (user_id, key, retention_hours),
        )
        return (row[0], row[1]) if row else None

    def save(self, user_id: int, key: str, request_hash: str, order_id: int) -> None:
        """Remember the order the user's key placed (replacing an expired entry), in the current transaction."""
        self._execute(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (user_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, "
            "order_id = EXCLUDED.order_id, created_at = now()",
            (user_id, key, request_hash, order_id),
        )

    def delete_expired(self, retention_hours: int) -> int:
        """Delete keys older than the retention; return how many."""
        return self._execute(
            "DELETE FROM idempotency_keys WHERE created_at <= now() - make_interval(hours => %s)",
            (retention_hours,),
        )
