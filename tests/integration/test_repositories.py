"""Repositories against real Postgres: SQL, constraints and pagination do what the services assume."""

from __future__ import annotations

import psycopg
import pytest

from webapp.errors import EmailTaken, SkuTaken
from webapp.models import OrderItem
from webapp.repositories import OrderRepository, ProductRepository, UserRepository


@pytest.fixture
def conn(database_url: str, db):
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def test_users_are_unique_by_email_ignoring_case(conn):
    users = UserRepository(lambda: conn)
    users.add("Ann", "Ann@Example.org")
    with pytest.raises(EmailTaken):
        users.add("Imposter", "ann@example.ORG")


def test_user_keyset_pagination_walks_every_row_once(conn):
    users = UserRepository(lambda: conn)
    created = [users.add(f"U{i}", f"u{i}@example.org").id for i in range(7)]
    seen, after = [], 0
    while True:
        page = users.list_after(after, 3)
        seen += [u.id for u in page.items]
        if page.next is None:
            break
        after = page.next
    assert seen == created


def test_duplicate_sku_is_refused(conn):
    products = ProductRepository(lambda: conn)
    products.add("SKU-1", "One", 100, 1)
    with pytest.raises(SkuTaken):
        products.add("SKU-1", "Other", 100, 1)


def test_stock_can_never_go_negative_even_if_a_caller_forgets_to_check(conn):
    products = ProductRepository(lambda: conn)
    product = products.add("SKU-1", "One", 100, 1)
    with pytest.raises(psycopg.errors.CheckViolation):
        products.decrement_stock({product.id: 2})


def test_an_order_round_trips_with_its_items_and_total(conn):
    user = UserRepository(lambda: conn).add("Ann", "ann@example.org")
    products = ProductRepository(lambda: conn)
    a, b = products.add("A", "A", 150, 9), products.add("B", "B", 200, 9)
    orders = OrderRepository(lambda: conn)
    placed = orders.add(user.id, [OrderItem(b.id, 1, 200), OrderItem(a.id, 2, 150)])
    fetched = orders.get(placed.id)
    assert fetched is not None
    assert fetched.total_cents == 500
    assert set(fetched.items) == set(placed.items)
    assert [o.id for o in orders.list_for_user(user.id, 0, 10)] == [placed.id]
