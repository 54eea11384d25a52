"""ProductService: the catalogue."""

from __future__ import annotations

from webapp.errors import NotFound
from webapp.models import Product
from webapp.services.ports import ProductStore, UnitOfWork


class ProductService:
    """Create and fetch products."""

    def __init__(self, uow: UnitOfWork, products: ProductStore):
        self._uow = uow
        self._products = products

    def add(self, sku: str, name: str, price_cents: int, stock: int) -> Product:
        """Create a product; SkuTaken when the sku exists."""
        with self._uow.begin() as tx:
            product = self._products.add(sku, name, price_cents, stock)
            tx.commit()
        return product

    def get(self, product_id: int) -> Product:
        """Return the product; NotFound otherwise."""
        with self._uow.begin(read_only=True):
            product = self._products.get(product_id)
        if product is None:
            raise NotFound(f"product {product_id} not found")
        return product
