"""ProductRepository: the catalogue and its stock."""

from __future__ import annotations

from collections.abc import Sequence

from webapp.errors import SkuTaken
from webapp.models import Product
from webapp.repositories.base import Repository

_COLUMNS = "id, sku, name, price_cents, stock, created_at"


class ProductRepository(Repository):
    """Store, fetch, lock and decrement products."""

    def add(self, sku: str, name: str, price_cents: int, stock: int) -> Product:
        """Insert a product; raise SkuTaken if the sku exists."""
        row = self._one(
            f"INSERT INTO products (sku, name, price_cents, stock) VALUES (%s, %s, %s, %s) "
            f"ON CONFLICT (sku) DO NOTHING RETURNING {_COLUMNS}",
            (sku, name, price_cents, stock),
        )
        if row is None:
            raise SkuTaken("a product with this sku already exists", fields={"sku": "already taken"})
        return Product(*row)

    def get(self, product_id: int) -> Product | None:
        """Return the product with this id, or None."""
        row = self._one(f"SELECT {_COLUMNS} FROM products WHERE id = %s", (product_id,))
        return Product(*row) if row else None

    def lock_many(self, product_ids: Sequence[int]) -> dict[int, Product]:
        """Lock the given products FOR UPDATE, in id order, and return them by id.

        ORDER BY id makes every transaction take its row locks in the same order,
        so two concurrent orders over the same products queue instead of deadlocking.
        """
        rows = self._all(
            f"SELECT {_COLUMNS} FROM products WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            (list(product_ids),),
        )
        return {row[0]: Product(*row) for row in rows}

    def decrement_stock(self, quantities: dict[int, int]) -> None:
        """Subtract each quantity from its product's stock in one statement."""
        self._execute(
            "UPDATE products SET stock = stock - v.quantity "
            "FROM unnest(%s::bigint[], %s::int[]) AS v(id, quantity) WHERE products.id = v.id",
            (list(quantities), list(quantities.values())),
        )
