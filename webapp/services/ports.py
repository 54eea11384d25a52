"""What services need from the outside world, as Protocols: Postgres repositories and the
in-memory fakes of the unit tests both fit them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from webapp.models import Order, OrderItem, Page, Product, User


class UnitOfWork(Protocol):
    def restart(self) -> None:
        """Roll back everything done so far; the next query starts a fresh transaction."""

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run callback after a successful COMMIT only (cache invalidation)."""


class UserStore(Protocol):
    def add(self, name: str, email: str) -> User: ...
    def get(self, user_id: int) -> User | None: ...
    def exists(self, user_id: int) -> bool: ...
    def list_after(self, after: int, limit: int) -> Page: ...


class UserCache(Protocol):
    """A best-effort cache: get returns None on a miss *or* when the cache is unwell; never raises."""

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
    def try_claim(self, key: str) -> bool: ...
    def find(self, key: str, retention_hours: int) -> tuple[str, int, dict[str, Any]] | None: ...
    def save(self, key: str, request_hash: str, status_code: int, response: dict[str, Any]) -> None: ...


class NoCache:
    """The cache used when REDIS_URL is unset: always a miss."""

    def get(self, user_id: int) -> User | None:
        return None

    def put(self, user: User) -> None:
        pass

    def invalidate(self, user_id: int) -> None:
        pass
