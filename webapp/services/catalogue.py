"""ProductService: the catalogue."""

from __future__ import annotations

from webapp.domain.errors import NotFound
from webapp.domain.models import Product
from webapp.services.ports import UnitOfWork


class ProductService:
    """Create and fetch products."""

    def __init__(self, uow: UnitOfWork):
        self._uow = uow

    def add(self, sku: str, name: str, price_cents: int, stock: int) -> Product:
        """Create a product; SkuTaken when the sku exists."""
        with self._uow.begin() as tx:
            product = tx.products.add(sku, name, price_cents, stock)
            tx.commit()
        return product

    def get(self, product_id: int) -> Product:
        """Return the product; NotFound otherwise."""
        with self._uow.begin(read_only=True) as tx:
            product = tx.products.get(product_id)
        if product is None:
            raise NotFound(f"product {product_id} not found")
        return product
