"""100 concurrent orders against a stock of 20, each on its own connection: exactly 20 win."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from webapp.domain.errors import InsufficientStock
from webapp.domain.models import OrderLine
from webapp.postgres.database import Database
from webapp.postgres.unit_of_work import UnitOfWork
from webapp.resilience import Deadline
from webapp.services.orders import OrderService


def order_service(database: Database) -> OrderService:
    """The service as create_app wires it, shared by every thread (each sees its own transaction),
    but with one attempt only: a deadlock or serialization failure must surface, not be retried away."""
    return OrderService(UnitOfWork(database, deadline=lambda: Deadline(20)), attempts=1)


def place_one(service: OrderService, user_id: int, product_ids: list[int]) -> str:
    try:
        service.place_order(user_id, [OrderLine(p, 1) for p in product_ids])
    except InsufficientStock:
        return "409"
    return "201"


@pytest.mark.slow
def test_one_hundred_concurrent_orders_against_stock_twenty_sell_exactly_twenty(database_url: str, db):
    user_id = db.execute("INSERT INTO users (name, email) VALUES ('A', 'a@example.org') RETURNING id").fetchone()[0]
    product = db.execute(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ('P', 'P', 100, 20) RETURNING id"
    ).fetchone()[0]
    with Database(database_url, min_size=0, max_size=20, timeout=20, max_waiting=200) as database:
        service = order_service(database)
        with ThreadPoolExecutor(max_workers=100) as pool:
            outcomes = list(pool.map(lambda _: place_one(service, user_id, [product]), range(100)))
    assert outcomes.count("201") == 20
    assert outcomes.count("409") == 80
    assert db.execute("SELECT stock FROM products WHERE id = %s", (product,)).fetchone() == (0,)
    assert db.execute("SELECT count(*), coalesce(sum(quantity), 0) FROM order_items").fetchone() == (20, 20)


@pytest.mark.slow
def test_orders_locking_the_same_products_in_opposite_request_order_never_deadlock(database_url: str, db):
    user_id = db.execute("INSERT INTO users (name, email) VALUES ('A', 'a@example.org') RETURNING id").fetchone()[0]
    ids = [
        db.execute("INSERT INTO products (sku, name, price_cents, stock) VALUES (%s, 'P', 1, 1000) RETURNING id",
                   (sku,)).fetchone()[0]
        for sku in ("P1", "P2", "P3")
    ]
    with Database(database_url, min_size=0, max_size=10, timeout=20, max_waiting=200) as database:
        service = order_service(database)
        with ThreadPoolExecutor(max_workers=20) as pool:
            orders = [ids if i % 2 else list(reversed(ids)) for i in range(60)]
            outcomes = list(pool.map(lambda p: place_one(service, user_id, p), orders))
    assert outcomes == ["201"] * 60  # a deadlock would surface as TransientDatabaseError here
    assert db.execute("SELECT sum(stock) FROM products").fetchone() == (3000 - 180,)
