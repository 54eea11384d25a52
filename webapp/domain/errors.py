"""Domain errors: what went wrong, in the service's words. No Flask here; web/errors.py maps them to HTTP."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the service raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields


class ValidationFailed(DomainError):
    """The request was well-formed but its content breaks the rules (types, ranges, unknown fields)."""

    code = "validation_failed"


class MalformedRequest(DomainError):
    """The request body could not be read as JSON at all."""

    code = "malformed_json"


class NotFound(DomainError):
    """The thing asked for does not exist."""

    code = "not_found"


class Conflict(DomainError):
    """The request clashes with the current state (duplicate email, idempotency key in flight)."""

    code = "conflict"


class EmailTaken(Conflict):
    code = "email_taken"


class SkuTaken(Conflict):
    code = "sku_taken"


class InsufficientStock(Conflict):
    """Not enough stock for one of the order's products; nothing was changed."""

    code = "insufficient_stock"

    def __init__(self, product_id: int, available: int, requested: int, *, field: str):
        super().__init__(
            f"product {product_id} has {available} in stock, {requested} requested",
            fields={field: f"only {available} in stock"},
        )


class IdempotencyKeyInFlight(Conflict):
    code = "idempotency_key_in_flight"


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"


class Unavailable(DomainError):
    """A dependency we need cannot serve right now (pool exhausted, database down); try again."""

    code = "service_unavailable"


class QueuedTooLong(Unavailable):
    """The request's budget ran out while it waited for a worker (X-Request-Start): its client has gone."""

    code = "queued_too_long"


class DeadlineExceeded(DomainError):
    """The request ran out of its time budget (e.g. Postgres statement_timeout)."""

    code = "deadline_exceeded"


class TransientDatabaseError(DomainError):
    """Serialization failure or deadlock: the whole transaction may be retried."""

    code = "transient_database_error"


class CommitFailed(Exception):
    """COMMIT did not commit: a failure of ours (500), never a DomainError a client could cause."""
