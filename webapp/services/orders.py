"""OrderService: place an order atomically, exactly once per user and Idempotency-Key.

The idempotency rule, all of it here (its SQL: IdempotencyKeyRepository, postgres/repositories.py):

- A key belongs to a user: (user_id, key). Another user sending the same key places their own order.
- In flight: the order's transaction first claims (user, key) with a transaction-scoped advisory
  lock, without waiting (`_replay`); sent again while that transaction is open, the request gets
  409 idempotency_key_in_flight at once.
- Remembered: the key, the request's fingerprint and the order id are written in the order's own
  transaction (`_place_once`), so they are stored if and only if the order commits: a request that
  failed (409 out of stock, a 5xx) has not used up its key.
- Replayed: within IDEMPOTENCY_RETENTION_HOURS the same key with the same fingerprint returns the
  stored order (201, Idempotent-Replayed: true) and places nothing; with another fingerprint it is
  422 idempotency_key_reused. Past the retention the key is new again, and its row is taken over.
- The fingerprint is the order's meaning (`fingerprint`): the user and each product with its
  quantity, in product order; not the body's bytes (key order, spacing, 2 vs 2.0, line order).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from webapp.domain.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InsufficientStock,
    NotFound,
    TransientDatabaseError,
    ValidationFailed,
)
from webapp.domain.models import Order, OrderItem, OrderLine, Product
from webapp.resilience import Deadline, RetryError, retry_with_backoff
from webapp.services.ports import Transaction, UnitOfWork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlacedOrder:
    """The order a POST /orders stands for, and whether it was placed earlier under the same key."""

    order: Order
    replayed: bool


class OrderService:
    """Orders: the order rows and the stock they consume change together or not at all."""

    def __init__(
        self,
        uow: UnitOfWork,
        *,
        deadline: Callable[[], Deadline | None] = lambda: None,
        retention_hours: int = 24,
        attempts: int = 3,
    ):
        self._uow = uow
        self._deadline = deadline
        self._retention_hours = retention_hours
        self._attempts = attempts

    def place_order(
        self, user_id: int, lines: Sequence[OrderLine], *, idempotency_key: str | None = None
    ) -> PlacedOrder:
        """Place the order, retrying the *whole transaction* on serialization failures and deadlocks."""
        request_hash = fingerprint(user_id, lines) if idempotency_key is not None else ""
        try:
            return retry_with_backoff(
                lambda: self._place_once(user_id, lines, idempotency_key, request_hash),
                attempts=self._attempts,
                base=0.02,
                max_delay=0.25,
                deadline=self._deadline(),  # no backoff sleep outlives the request
                retry_on=(TransientDatabaseError,),
                before_retry=_log_retry,
            )
        except RetryError as exc:
            raise exc.last_error from exc

    def get(self, order_id: int) -> Order:
        """Return the order; NotFound otherwise."""
        with self._uow.begin(read_only=True) as tx:
            order = tx.orders.get(order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        return order

    def _place_once(
        self, user_id: int, lines: Sequence[OrderLine], key: str | None, request_hash: str
    ) -> PlacedOrder:
        # One attempt, one transaction: any exception leaves the `with` and rolls all of it back.
        with self._uow.begin() as tx:
            if key is not None:
                replay = self._replay(tx, user_id, key, request_hash)
                if replay is not None:
                    return replay
            if not tx.users.exists(user_id):
                raise ValidationFailed("unknown user", fields={"user_id": f"no user with id {user_id}"})
            products = tx.products.lock_many(sorted(line.product_id for line in lines))
            self._check_lines(lines, products)
            tx.products.decrement_stock({line.product_id: line.quantity for line in lines})
            items = [
                OrderItem(line.product_id, line.quantity, products[line.product_id].price_cents,
                          products[line.product_id].name)
                for line in sorted(lines, key=lambda line: line.product_id)  # the order GET returns them in
            ]
            order = tx.orders.add(user_id, items)
            if key is not None:
                # Same transaction as the order: the key is stored if and only if the order is.
                tx.idempotency_keys.save(user_id, key, request_hash, order.id)
            tx.commit()
        return PlacedOrder(order, replayed=False)

    @staticmethod
    def _check_lines(lines: Sequence[OrderLine], products: dict[int, Product]) -> None:
        """Raise a 422 naming unknown products, or InsufficientStock (409) for the first short line."""
        missing = {
            f"items.{i}.product_id": f"no product with id {line.product_id}"
            for i, line in enumerate(lines)
            if line.product_id not in products
        }
        if missing:
            raise ValidationFailed("unknown product", fields=missing)
        for i, line in enumerate(lines):
            stock = products[line.product_id].stock
            if stock < line.quantity:
                raise InsufficientStock(line.product_id, stock, line.quantity, field=f"items.{i}.quantity")

    def _replay(self, tx: Transaction, user_id: int, key: str, request_hash: str) -> PlacedOrder | None:
        """The order this user's key already placed (a replay), None for a new key; 409 while in flight, 422 reused."""
        if not tx.idempotency_keys.try_claim(user_id, key):
            raise IdempotencyKeyInFlight("a request with this Idempotency-Key is in progress; retry later")
        stored = tx.idempotency_keys.find(user_id, key, self._retention_hours)
        if stored is None:
            return None
        stored_hash, order_id = stored
        if stored_hash != request_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request body",
                fields={"Idempotency-Key": "reused with a different body"},
            )
        order = tx.orders.get(order_id)
        if order is None:  # the foreign key forbids it; say so loudly rather than place a second order
            raise RuntimeError(f"idempotency key refers to missing order {order_id}")
        return PlacedOrder(order, replayed=True)


def fingerprint(user_id: int, lines: Sequence[OrderLine]) -> str:
    """SHA-256 of the order's meaning, not the body's bytes.

    Key order, spacing, 5 vs 5.0 and the order of the lines do not change what is asked for.
    """
    ordered = sorted(lines, key=lambda line: line.product_id)
    canonical = f"{user_id}|" + ",".join(f"{line.product_id}x{line.quantity}" for line in ordered)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _log_retry(attempt: int, exc: BaseException) -> None:
    # The failed attempt's `with` has already rolled back. Logged, because a steady trickle of
    # these is how lock contention first shows itself.
    log.warning("order transaction attempt %d failed (%s); retrying the whole transaction", attempt, exc)
