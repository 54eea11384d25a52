"""In-memory fakes of the repositories and unit of work (cosmicpython style) for service tests.

The fake unit of work keeps a snapshot so `restart()` really undoes what the attempt did,
like a Postgres ROLLBACK would.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from webapp.errors import EmailTaken, TransientDatabaseError
from webapp.models import Order, OrderItem, Page, Product, User

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeState:
    def __init__(self) -> None:
        self.users: dict[int, User] = {}
        self.products: dict[int, Product] = {}
        self.orders: dict[int, Order] = {}
        self.keys: dict[str, tuple[str, int, dict[str, Any]]] = {}


class FakeUnitOfWork:
    def __init__(self, state: FakeState):
        self.state = state
        self.snapshot = copy.deepcopy(state.__dict__)
        self.restarts = 0
        self.claimed: set[str] = set()

    def restart(self) -> None:
        self.state.__dict__.update(copy.deepcopy(self.snapshot))
        self.restarts += 1


class FakeUsers:
    def __init__(self, state: FakeState):
        self.state = state
        self.gets = 0

    def add(self, name: str, email: str) -> User:
        if any(u.email.lower() == email.lower() for u in self.state.users.values()):
            raise EmailTaken("taken", fields={"email": "already taken"})
        user = User(len(self.state.users) + 1, name, email, NOW)
        self.state.users[user.id] = user
        return user

    def get(self, user_id: int) -> User | None:
        self.gets += 1
        return self.state.users.get(user_id)

    def exists(self, user_id: int) -> bool:
        return user_id in self.state.users

    def list_after(self, after: int, limit: int) -> Page:
        ids = sorted(i for i in self.state.users if i > after)
        items = tuple(self.state.users[i] for i in ids[:limit])
        return Page(items, items[-1].id if len(ids) > limit else None)


class FakeProducts:
    def __init__(self, state: FakeState, fail_times: int = 0):
        self.state = state
        self.fail_times = fail_times  # simulate serialization failures on the first N locks
        self.lock_calls: list[list[int]] = []

    def add(self, sku: str, name: str, price_cents: int, stock: int) -> Product:
        product = Product(len(self.state.products) + 1, sku, name, price_cents, stock, NOW)
        self.state.products[product.id] = product
        return product

    def get(self, product_id: int) -> Product | None:
        return self.state.products.get(product_id)

    def lock_many(self, product_ids: Sequence[int]) -> dict[int, Product]:
        self.lock_calls.append(list(product_ids))
        if self.fail_times:
            self.fail_times -= 1
            raise TransientDatabaseError("could not serialize access (40001)")
        return {i: self.state.products[i] for i in product_ids if i in self.state.products}

    def decrement_stock(self, quantities: dict[int, int]) -> None:
        for product_id, quantity in quantities.items():
            product = self.state.products[product_id]
            assert product.stock >= quantity, "service must check stock before decrementing"
            self.state.products[product_id] = replace(product, stock=product.stock - quantity)


class FakeOrders:
    def __init__(self, state: FakeState):
        self.state = state

    def add(self, user_id: int, items: Sequence[OrderItem]) -> Order:
        total = sum(i.quantity * i.unit_price_cents for i in items)
        order = Order(len(self.state.orders) + 1, user_id, total, NOW, tuple(items))
        self.state.orders[order.id] = order
        return order

    def get(self, order_id: int) -> Order | None:
        return self.state.orders.get(order_id)

    def list_for_user(self, user_id: int, after: int, limit: int) -> list[Order]:
        mine = sorted((o for o in self.state.orders.values() if o.user_id == user_id and o.id > after),
                      key=lambda o: o.id)
        return mine[:limit]


class FakeKeys:
    def __init__(self, state: FakeState, busy: set[str] | None = None):
        self.state = state
        self.busy = busy or set()  # keys "held by another request"

    def try_claim(self, key: str) -> bool:
        return key not in self.busy

    def find(self, key: str, retention_hours: int) -> tuple[str, int, dict[str, Any]] | None:
        return self.state.keys.get(key)

    def save(self, key: str, request_hash: str, status_code: int, response: dict[str, Any]) -> None:
        self.state.keys[key] = (request_hash, status_code, response)


class FakeCache:
    def __init__(self) -> None:
        self.store: dict[int, User] = {}

    def get(self, user_id: int) -> User | None:
        return self.store.get(user_id)

    def put(self, user: User) -> None:
        self.store[user.id] = user

    def invalidate(self, user_id: int) -> None:
        self.store.pop(user_id, None)
