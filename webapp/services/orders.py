"""OrderService: place an order atomically, exactly once per idempotency key."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from webapp.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InsufficientStock,
    NotFound,
    TransientDatabaseError,
    ValidationFailed,
)
from webapp.models import Order, OrderItem, OrderLine
from webapp.resilience import Deadline, RetryError, retry_with_backoff
from webapp.serialize import order_to_json
from webapp.services.ports import IdempotencyStore, OrderStore, ProductStore, UnitOfWork, UserStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrderReceipt:
    """What placing an order produced: the order as the API shows it, and whether it is a replay."""

    body: dict[str, Any]
    status_code: int
    replayed: bool


class OrderService:
    """Orders: the order rows and the stock they consume change together or not at all."""

    def __init__(
        self,
        uow: UnitOfWork,
        users: UserStore,
        products: ProductStore,
        orders: OrderStore,
        keys: IdempotencyStore,
        *,
        retention_hours: int = 24,
        attempts: int = 3,
    ):
        self._uow = uow
        self._users = users
        self._products = products
        self._orders = orders
        self._keys = keys
        self._retention_hours = retention_hours
        self._attempts = attempts

    def place_order(
        self,
        user_id: int,
        lines: Sequence[OrderLine],
        *,
        idempotency_key: str | None = None,
        request_hash: str = "",
        deadline: Deadline | None = None,
    ) -> OrderReceipt:
        """Place the order, retrying the *whole transaction* on serialization failures and deadlocks."""
        try:
            return retry_with_backoff(
                lambda: self._place_once(user_id, lines, idempotency_key, request_hash),
                attempts=self._attempts,
                base=0.02,
                max_delay=0.25,
                deadline=deadline,
                retry_on=(TransientDatabaseError,),
                before_retry=self._roll_back_for_retry,
            )
        except RetryError as exc:
            raise exc.last_error from exc

    def _roll_back_for_retry(self, attempt: int, exc: BaseException) -> None:
        # Never retry one statement: roll the transaction back and redo all of it. Logged,
        # because a steady trickle of these is how lock contention first shows itself.
        log.warning("order transaction attempt %d failed (%s); retrying the whole transaction", attempt, exc)
        self._uow.restart()

    def get(self, order_id: int) -> Order:
        """Return the order; NotFound otherwise."""
        order = self._orders.get(order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        return order

    def _place_once(
        self, user_id: int, lines: Sequence[OrderLine], key: str | None, request_hash: str
    ) -> OrderReceipt:
        if key is not None:
            replay = self._replay(key, request_hash)
            if replay is not None:
                return replay
        if not self._users.exists(user_id):
            raise ValidationFailed("unknown user", fields={"user_id": f"no user with id {user_id}"})
        products = self._products.lock_many(sorted(line.product_id for line in lines))
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
        self._products.decrement_stock({line.product_id: line.quantity for line in lines})
        items = [
            OrderItem(line.product_id, line.quantity, products[line.product_id].price_cents)
            for line in sorted(lines, key=lambda line: line.product_id)  # the order GET returns them in
        ]
        body = order_to_json(self._orders.add(user_id, items))
        if key is not None:
            # Same transaction as the order: the key is stored if and only if the order is.
            self._keys.save(key, request_hash, 201, body)
        return OrderReceipt(body, 201, replayed=False)

    def _replay(self, key: str, request_hash: str) -> OrderReceipt | None:
        if not self._keys.try_claim(key):
            raise IdempotencyKeyInFlight("a request with this Idempotency-Key is in progress; retry later")
        stored = self._keys.find(key, self._retention_hours)
        if stored is None:
            return None
        stored_hash, status_code, body = stored
        if stored_hash != request_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request body",
                fields={"Idempotency-Key": "reused with a different body"},
            )
        return OrderReceipt(body, status_code, replayed=True)
