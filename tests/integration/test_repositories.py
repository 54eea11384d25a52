"""Repositories against real Postgres: SQL, constraints and pagination do what the services assume."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from webapp.domain.errors import EmailTaken, SkuTaken
from webapp.domain.models import OrderItem
from webapp.postgres.database import Database
from webapp.postgres.unit_of_work import Transaction
from webapp.resilience import Deadline


@pytest.fixture
def database(database_url: str, db) -> Iterator[Database]:
    with Database(database_url, min_size=1, max_size=2, timeout=2) as database:
        yield database


@pytest.fixture
def tx(database: Database) -> Iterator[Transaction]:
    """One transaction the repositories run in; committed, so `db` can see what they wrote."""
    with Transaction(database, Deadline(10)) as tx:
        yield tx
        tx.commit()


def test_users_are_unique_by_email_ignoring_case(tx):
    users = tx.users
    users.add("Ann", "Ann@Example.org")
    with pytest.raises(EmailTaken):
        users.add("Imposter", "ann@example.ORG")


def test_user_keyset_pagination_walks_every_row_once(tx):
    users = tx.users
    created = [users.add(f"U{i}", f"u{i}@example.org").id for i in range(7)]
    seen, after = [], 0
    while True:
        page = users.list_after(after, 3)
        seen += [u.id for u in page.items]
        if page.next is None:
            break
        after = page.next
    assert seen == created


def test_duplicate_sku_is_refused(tx):
    products = tx.products
    products.add("SKU-1", "One", 100, 1)
    with pytest.raises(SkuTaken):
        products.add("SKU-1", "Other", 100, 1)


def test_stock_can_never_go_negative_even_if_a_caller_forgets_to_check(database: Database):
    with Transaction(database, Deadline(10)) as tx:
        products = tx.products
        product = products.add("SKU-1", "One", 100, 1)
        with pytest.raises(psycopg.errors.CheckViolation):
            products.decrement_stock({product.id: 2})


def test_an_order_round_trips_with_its_items_and_total(tx):
    user = tx.users.add("Ann", "ann@example.org")
    products = tx.products
    a, b = products.add("A", "A", 150, 9), products.add("B", "B", 200, 9)
    orders = tx.orders
    placed = orders.add(user.id, [OrderItem(b.id, 1, 200, "B"), OrderItem(a.id, 2, 150, "A")])
    fetched = orders.get(placed.id)
    assert fetched is not None
    assert fetched.total_cents == 500
    assert set(fetched.items) == set(placed.items)
    assert [o.id for o in orders.list_for_user(user.id, 0, 10)] == [placed.id]


def test_an_order_line_stores_the_name_its_product_had_when_ordered(tx):
    user = tx.users.add("Ann", "ann@example.org")
    apple = tx.products.add("APPLE", "Apple", 150, 9)
    placed = tx.orders.add(user.id, [OrderItem(apple.id, 1, 150, "Apple")])
    tx.execute("UPDATE products SET name = 'Green apple' WHERE id = %s", (apple.id,))
    fetched = tx.orders.get(placed.id)
    assert fetched is not None and [item.product_name for item in fetched.items] == ["Apple"]


@pytest.fixture
def two_orders(database: Database) -> dict[str, int]:
    """Two users (Ann, Bob) with one order each, committed."""
    with Transaction(database, Deadline(10)) as tx:
        users, orders = tx.users, tx.orders
        product = tx.products.add("P", "P", 100, 9)
        ann, bob = users.add("Ann", "ann@example.org"), users.add("Bob", "bob@example.org")
        ids = {
            "ann": ann.id, "bob": bob.id,
            "ann_order": orders.add(ann.id, [OrderItem(product.id, 1, 100, "P")]).id,
            "bob_order": orders.add(bob.id, [OrderItem(product.id, 1, 100, "P")]).id,
        }
        tx.commit()
    return ids


def test_the_same_idempotency_key_is_separate_for_each_user(tx, two_orders):
    keys = tx.idempotency_keys
    keys.save(two_orders["ann"], "k-1", "hash-a", two_orders["ann_order"])
    keys.save(two_orders["bob"], "k-1", "hash-b", two_orders["bob_order"])  # no conflict: another user's key
    assert keys.find(two_orders["ann"], "k-1", 24) == ("hash-a", two_orders["ann_order"])
    assert keys.find(two_orders["bob"], "k-1", 24) == ("hash-b", two_orders["bob_order"])
    assert keys.find(two_orders["ann"], "k-2", 24) is None


def test_an_expired_idempotency_key_is_absent_and_saving_takes_its_row_over(tx, two_orders):
    keys = tx.idempotency_keys
    keys.save(two_orders["ann"], "k-1", "old-hash", two_orders["ann_order"])
    tx.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    assert keys.find(two_orders["ann"], "k-1", 24) is None  # past retention: the request is new again
    keys.save(two_orders["ann"], "k-1", "new-hash", two_orders["bob_order"])
    assert keys.find(two_orders["ann"], "k-1", 24) == ("new-hash", two_orders["bob_order"])
    assert keys.delete_expired(24) == 0  # the row was renewed, not duplicated


def test_a_claimed_key_blocks_only_the_same_user_and_only_until_the_claim_ends(database: Database, two_orders, db):
    ann, bob = two_orders["ann"], two_orders["bob"]
    with Transaction(database, Deadline(10)) as first:
        assert first.idempotency_keys.try_claim(ann, "k-1")
        with Transaction(database, Deadline(10)) as second:
            rival = second.idempotency_keys
            assert not rival.try_claim(ann, "k-1")  # in flight in another transaction: refused at once
            assert rival.try_claim(bob, "k-1")  # another user's key of the same name is free
            assert rival.try_claim(ann, "k-2")
    # The claims were transaction-scoped (safe behind a pooler): none outlives its transaction,
    # though both sessions stay open in the pool.
    held = db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    assert held == (0,)
    with Transaction(database, Deadline(10)) as third:
        assert third.idempotency_keys.try_claim(ann, "k-1")
