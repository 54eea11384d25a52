"""In-memory fakes of the repositories, cache and unit of work (cosmicpython style) for service tests.

They satisfy the Protocols in webapp/services/ports.py (mypy checks tests/ too). The fake unit of
work behaves like a Postgres transaction where it matters to the services: what a transaction did
is undone unless it commits, and it records each commit and rollback, with the cache's calls, in
one event list, so a test can tell the order in which they happened.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

from webapp.domain.errors import EmailTaken, TransientDatabaseError
from webapp.domain.models import Order, OrderItem, Page, Product, User

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeState:
    def __init__(self) -> None:
        self.users: dict[int, User] = {}
        self.products: dict[int, Product] = {}
        self.orders: dict[int, Order] = {}
        self.keys: dict[tuple[int, str], tuple[str, int]] = {}
        self.events: list[str] = []  # "begin", "begin read-only", "commit", "rollback", "cache ..."


class FakeTransaction:
    """What `uow.begin()` yields: the unit of work's fake repositories as attributes, and commit()."""

    def __init__(self, uow: FakeUnitOfWork):
        self.state = uow.state
        self.users = uow.users
        self.products = uow.products
        self.orders = uow.orders
        self.idempotency_keys = uow.idempotency_keys
        self.committed = False

    def commit(self) -> None:
        self.committed = True
        self.state.events.append("commit")


class FakeUnitOfWork:
    """`with uow.begin() as tx`: a snapshot of the state, restored unless tx.commit() was called."""

    def __init__(self, state: FakeState, *, users: FakeUsers | None = None, products: FakeProducts | None = None,
                 orders: FakeOrders | None = None, idempotency_keys: FakeKeys | None = None):
        self.state = state
        self.users = users or FakeUsers(state)
        self.products = products or FakeProducts(state)
        self.orders = orders or FakeOrders(state)
        self.idempotency_keys = idempotency_keys or FakeKeys(state)

    @contextmanager
    def begin(self, *, read_only: bool = False) -> Iterator[FakeTransaction]:
        self.state.events.append("begin read-only" if read_only else "begin")
        snapshot = copy.deepcopy({k: v for k, v in vars(self.state).items() if k != "events"})
        tx = FakeTransaction(self)
        try:
            yield tx
        finally:
            if not tx.committed:
                vars(self.state).update(snapshot)
                self.state.events.append("rollback")

    @property
    def commits(self) -> int:
        return self.state.events.count("commit")

    @property
    def rollbacks(self) -> int:
        return self.state.events.count("rollback")


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
    def __init__(self, state: FakeState, fail_on_add: bool = False):
        self.state = state
        self.fail_on_add = fail_on_add  # a step that fails after the stock was decremented

    def add(self, user_id: int, items: Sequence[OrderItem]) -> Order:
        if self.fail_on_add:
            raise RuntimeError("injected failure inserting the order")
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
    def __init__(self, state: FakeState, busy: set[tuple[int, str]] | None = None):
        self.state = state
        self.busy = busy or set()  # (user, key) pairs "held by another request"

    def try_claim(self, user_id: int, key: str) -> bool:
        return (user_id, key) not in self.busy

    def find(self, user_id: int, key: str, retention_hours: int) -> tuple[str, int] | None:
        return self.state.keys.get((user_id, key))

    def save(self, user_id: int, key: str, request_hash: str, order_id: int) -> None:
        self.state.keys[(user_id, key)] = (request_hash, order_id)


class FakeCache:
    health_check = None

    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.store: dict[int, User] = {}

    def get(self, user_id: int) -> User | None:
        return self.store.get(user_id)

    def put(self, user: User) -> None:
        self.store[user.id] = user

    def invalidate(self, user_id: int) -> None:
        self.state.events.append(f"cache invalidate {user_id}")
        self.store.pop(user_id, None)
