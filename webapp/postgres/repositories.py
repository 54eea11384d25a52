"""Repositories: the only code that speaks SQL, each statement beside the method that runs it.

Each one is built by a Transaction (`tx.users`, `tx.orders`, ...) and runs every statement in it:
parameterised, never formatted, with psycopg's failures translated by the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, LiteralString, Protocol

import psycopg

from webapp.domain.errors import EmailTaken, SkuTaken
from webapp.domain.models import Order, OrderItem, Page, Product, User


class Statements(Protocol):
    """What a repository runs its SQL on: the transaction that built it."""

    def execute(self, query: LiteralString, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]: ...


_USER = "id, name, email, created_at"


class UserRepository:
    """Store and fetch users."""

    def __init__(self, tx: Statements):
        self._tx = tx

    def add(self, name: str, email: str) -> User:
        """Insert a user; raise EmailTaken if the email (any case) is already used."""
        # ON CONFLICT DO NOTHING instead of catching UniqueViolation: a failed statement would
        # poison the request's transaction, and this keeps the 409 path a plain branch.
        row = self._tx.execute(
            f"INSERT INTO users (name, email) VALUES (%s, %s) ON CONFLICT ((lower(email))) DO NOTHING "
            f"RETURNING {_USER}",
            (name, email),
        ).fetchone()
        if row is None:
            raise EmailTaken("a user with this email already exists", fields={"email": "already taken"})
        return User(*row)

    def get(self, user_id: int) -> User | None:
        """Return the user with this id, or None."""
        row = self._tx.execute(f"SELECT {_USER} FROM users WHERE id = %s", (user_id,)).fetchone()
        return User(*row) if row else None

    def exists(self, user_id: int) -> bool:
        """True when a user with this id exists."""
        return self._tx.execute("SELECT 1 FROM users WHERE id = %s", (user_id,)).fetchone() is not None

    def list_after(self, after: int, limit: int) -> Page:
        """Keyset pagination by id: stable under inserts, no OFFSET scans."""
        rows = self._tx.execute(
            f"SELECT {_USER} FROM users WHERE id > %s ORDER BY id LIMIT %s",
            (after, limit + 1),  # one extra row tells whether a next page exists
        ).fetchall()
        items = tuple(User(*row) for row in rows[:limit])
        return Page(items=items, next=items[-1].id if len(rows) > limit else None)


_PRODUCT = "id, sku, name, price_cents, stock, created_at"


class ProductRepository:
    """Store, fetch, lock and decrement products."""

    def __init__(self, tx: Statements):
        self._tx = tx

    def add(self, sku: str, name: str, price_cents: int, stock: int) -> Product:
        """Insert a product; raise SkuTaken if the sku exists."""
        row = self._tx.execute(
            f"INSERT INTO products (sku, name, price_cents, stock) VALUES (%s, %s, %s, %s) "
            f"ON CONFLICT (sku) DO NOTHING RETURNING {_PRODUCT}",
            (sku, name, price_cents, stock),
        ).fetchone()
        if row is None:
            raise SkuTaken("a product with this sku already exists", fields={"sku": "already taken"})
        return Product(*row)

    def get(self, product_id: int) -> Product | None:
        """Return the product with this id, or None."""
        row = self._tx.execute(f"SELECT {_PRODUCT} FROM products WHERE id = %s", (product_id,)).fetchone()
        return Product(*row) if row else None

    def lock_many(self, product_ids: Sequence[int]) -> dict[int, Product]:
        """Lock the given products FOR UPDATE, in id order, and return them by id.

        ORDER BY id makes every transaction take its row locks in the same order,
        so two concurrent orders over the same products queue instead of deadlocking.
        """
        rows = self._tx.execute(
            f"SELECT {_PRODUCT} FROM products WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (list(product_ids),)
        ).fetchall()
        return {row[0]: Product(*row) for row in rows}

    def decrement_stock(self, quantities: dict[int, int]) -> None:
        """Subtract each quantity from its product's stock in one statement."""
        self._tx.execute(
            "UPDATE products SET stock = stock - v.quantity "
            "FROM unnest(%s::bigint[], %s::int[]) AS v(id, quantity) WHERE products.id = v.id",
            (list(quantities), list(quantities.values())),
        )


_ORDERS_WITH_ITEMS = (
    "SELECT o.id, o.user_id, o.total_cents, o.created_at, i.product_id, i.quantity, i.unit_price_cents, "
    "i.product_name "
    "FROM orders o JOIN order_items i ON i.order_id = o.id"
)


class OrderRepository:
    """Store and fetch orders with their items."""

    def __init__(self, tx: Statements):
        self._tx = tx

    def add(self, user_id: int, items: Sequence[OrderItem]) -> Order:
        """Insert an order and its items (two statements, same transaction)."""
        total = sum(item.quantity * item.unit_price_cents for item in items)
        row = self._tx.execute(
            "INSERT INTO orders (user_id, total_cents) VALUES (%s, %s) RETURNING id, created_at", (user_id, total)
        ).fetchone()
        assert row is not None  # INSERT ... RETURNING always returns the row
        order_id, created_at = row
        self._tx.execute(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents, product_name) "
            "SELECT %s, * FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::text[])",
            (order_id, [i.product_id for i in items], [i.quantity for i in items],
             [i.unit_price_cents for i in items], [i.product_name for i in items]),
        )
        return Order(order_id, user_id, total, created_at, tuple(items))

    def get(self, order_id: int) -> Order | None:
        """Return the order with its items, or None."""
        rows = self._tx.execute(
            _ORDERS_WITH_ITEMS + " WHERE o.id = %s ORDER BY i.product_id", (order_id,)
        ).fetchall()
        orders = _assemble(rows)
        return orders[0] if orders else None

    def list_for_user(self, user_id: int, after: int, limit: int) -> list[Order]:
        """The user's orders by id, keyset-paginated (the caller asks for one more to see if a next page exists)."""
        rows = self._tx.execute(
            _ORDERS_WITH_ITEMS + " WHERE o.id IN (SELECT id FROM orders WHERE user_id = %s AND id > %s "
            "ORDER BY id LIMIT %s) ORDER BY o.id, i.product_id",
            (user_id, after, limit),
        ).fetchall()
        return _assemble(rows)


def _assemble(rows: list[tuple[Any, ...]]) -> list[Order]:
    """Fold joined order/item rows (sorted by order id) into Orders."""
    orders: list[Order] = []
    items: list[OrderItem] = []
    for index, row in enumerate(rows):
        items.append(OrderItem(row[4], row[5], row[6], row[7]))
        last_of_order = index + 1 == len(rows) or rows[index + 1][0] != row[0]
        if last_of_order:
            orders.append(Order(row[0], row[1], row[2], row[3], tuple(items)))
            items = []
    return orders


class IdempotencyKeyRepository:
    """Which order each (user, Idempotency-Key) placed: claim, look up, remember, expire."""

    def __init__(self, tx: Statements):
        self._tx = tx

    def try_claim(self, user_id: int, key: str) -> bool:
        """Take a transaction-scoped advisory lock on (user, key); False when another request holds it."""
        # The lock (not a row) marks "in flight": it vanishes with the transaction, even on crash,
        # and, being transaction-scoped, it is safe behind a transaction-mode pooler. try_, never
        # the blocking form: a duplicate gets its 409 at once instead of holding a worker until
        # the first one commits. A 64-bit hash collision costs one spurious 409.
        row = self._tx.execute(
            "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, %s))", (key, user_id)
        ).fetchone()
        return bool(row and row[0])

    def find(self, user_id: int, key: str, retention_hours: int) -> tuple[str, int] | None:
        """(request_hash, order_id) stored for the user's key within retention, or None."""
        # An expired key counts as absent: the request is new again, and save() takes the row over.
        row = self._tx.execute(
            "SELECT request_hash, order_id FROM idempotency_keys "
            "WHERE user_id = %s AND key = %s AND created_at > now() - make_interval(hours => %s)",
            (user_id, key, retention_hours),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def save(self, user_id: int, key: str, request_hash: str, order_id: int) -> None:
        """Remember the order the user's key placed (replacing an expired entry), in this transaction."""
        self._tx.execute(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (user_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, "
            "order_id = EXCLUDED.order_id, created_at = now()",
            (user_id, key, request_hash, order_id),
        )

    def delete_expired(self, retention_hours: int) -> int:
        """Delete keys older than the retention; return how many."""
        return self._tx.execute(
            "DELETE FROM idempotency_keys WHERE created_at <= now() - make_interval(hours => %s)",
            (retention_hours,),
        ).rowcount
