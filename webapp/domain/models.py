"""The domain's nouns as frozen dataclasses: plain values, no I/O. A user's JSON form is defined here,
once, for both the API and the cache."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    email: str
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        """The user as JSON values: what the API answers and what the cache stores."""
        return {"id": self.id, "name": self.name, "email": self.email, "created_at": self.created_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> User:
        """The user as_json() described; KeyError, TypeError or ValueError when data is not one."""
        return cls(data["id"], data["name"], data["email"], datetime.fromisoformat(data["created_at"]))


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
    product_name: str  # the product's name when it was ordered (a later rename does not change it)


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
