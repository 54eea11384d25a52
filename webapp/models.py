"""The domain's nouns as frozen dataclasses: plain values, no behaviour, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    email: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    sku: str
    name: str
    price_cents: int
    stock: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OrderLine:
    """One line of an order request: which product, how many."""

    product_id: int
    quantity: int


@dataclass(frozen=True, slots=True)
class OrderItem:
    product_id: int
    quantity: int
    unit_price_cents: int


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    user_id: int
    total_cents: int
    created_at: datetime
    items: tuple[OrderItem, ...]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a keyset-paginated listing; `next` is the cursor for the following page."""

    items: tuple[User, ...]
    next: int | None
