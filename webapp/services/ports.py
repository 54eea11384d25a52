"""What services need from the outside world, as Protocols: the Postgres unit of work (with its
repositories) and the in-memory fakes of the unit tests both fit them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from webapp.domain.models import Order, OrderItem, Page, Product, User

Check = Callable[[float], None]  # a health check: raises when the dependency is unwell; gets its timeout in s


class UserStore(Protocol):
    def add(self, name: str, email: str) -> User: ...
    def get(self, user_id: int) -> User | None: ...
    def exists(self, user_id: int) -> bool: ...
    def list_after(self, after: int, limit: int) -> Page: ...


class UserCache(Protocol):
    """A best-effort cache: get returns None on a miss *or* when the cache is unwell; never raises."""

    @property
    def health_check(self) -> Check | None:
        """The readiness check for this cache; None when no cache is configured."""

    def get(self, user_id: int) -> User | None: ...
    def put(self, user: User) -> None: ...
    def invalidate(self, user_id: int) -> None: ...


class ProductStore(Protocol):
    def add(self, sku: str, name: str, price_cents: int, stock: int) -> Product: ...
    def get(self, product_id: int) -> Product | None: ...
    def lock_many(self, product_ids: Sequence[int]) -> dict[int, Product]: ...
    def decrement_stock(self, quantities: dict[int, int]) -> None: ...


class OrderStore(Protocol):
    def add(self, user_id: int, items: Sequence[OrderItem]) -> Order: ...
    def get(self, order_id: int) -> Order | None: ...
    def list_for_user(self, user_id: int, after: int, limit: int) -> list[Order]: ...


class IdempotencyStore(Protocol):
    def try_claim(self, user_id: int, key: str) -> bool: ...
    def find(self, user_id: int, key: str, retention_hours: int) -> tuple[str, int] | None: ...
    def save(self, user_id: int, key: str, request_hash: str, order_id: int) -> None: ...


class Transaction(Protocol):
    """One transaction and the repositories that run their SQL in it."""

    @property
    def users(self) -> UserStore: ...
    @property
    def products(self) -> ProductStore: ...
    @property
    def orders(self) -> OrderStore: ...
    @property
    def idempotency_keys(self) -> IdempotencyStore: ...

    def commit(self) -> None:
        """Make the transaction's work durable; raises if COMMIT did not happen."""


class UnitOfWork(Protocol):
    def begin(self, *, read_only: bool = False) -> AbstractContextManager[Transaction]:
        """Open a transaction: `with uow.begin() as tx: ...; tx.commit()`; without commit() it rolls back."""
