"""OrderRepository: orders and their items."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from webapp.models import Order, OrderItem
from webapp.repositories.base import Repository


class OrderRepository(Repository):
    """Store and fetch orders with their items."""

    def add(self, user_id: int, items: Sequence[OrderItem]) -> Order:
        """Insert an order and its items (two statements, same transaction)."""
        total = sum(item.quantity * item.unit_price_cents for item in items)
        row = self._one(
            "INSERT INTO orders (user_id, total_cents) VALUES (%s, %s) RETURNING id, created_at",
            (user_id, total),
        )
        assert row is not None  # INSERT ... RETURNING always returns the row
        order_id, created_at = row
        self._execute(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) "
            "SELECT %s, * FROM unnest(%s::bigint[], %s::int[], %s::bigint[])",
            (
                order_id,
                [i.product_id for i in items],
                [i.quantity for i in items],
                [i.unit_price_cents for i in items],
            ),
        )
        return Order(order_id, user_id, total, created_at, tuple(items))

    def get(self, order_id: int) -> Order | None:
        """Return the order with its items, or None."""
        rows = self._all(_SELECT_ORDERS + " WHERE o.id = %s ORDER BY i.product_id", (order_id,))
        orders = _assemble(rows)
        return orders[0] if orders else None

    def list_for_user(self, user_id: int, after: int, limit: int) -> list[Order]:
        """The user's orders by id, keyset-paginated (limit + 1 fetched by the caller's choice)."""
        rows = self._all(
            _SELECT_ORDERS + " WHERE o.id IN (SELECT id FROM orders WHERE user_id = %s AND id > %s "
            "ORDER BY id LIMIT %s) ORDER BY o.id, i.product_id",
            (user_id, after, limit),
        )
        return _assemble(rows)


_SELECT_ORDERS = (
    "SELECT o.id, o.user_id, o.total_cents, o.created_at, i.product_id, i.quantity, i.unit_price_cents "
    "FROM orders o JOIN order_items i ON i.order_id = o.id"
)


def _assemble(rows: list[tuple[Any, ...]]) -> list[Order]:
    """Fold joined order/item rows (sorted by order id) into Orders."""
    orders: list[Order] = []
    items: list[OrderItem] = []
    for index, row in enumerate(rows):
        items.append(OrderItem(row[4], row[5], row[6]))
        last_of_order = index + 1 == len(rows) or rows[index + 1][0] != row[0]
        if last_of_order:
            orders.append(Order(row[0], row[1], row[2], row[3], tuple(items)))
            items = []
    return orders
