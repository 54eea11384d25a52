"""POST /orders retries the WHOLE transaction after a real serialization failure or a real deadlock,
so the order exists once and the stock moves once; a client error is never retried.

The conflicts are made by a second connection of the test's own (the "rival"), step by step:
the test waits until the app's backend is really blocked on the rival's row lock before it moves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from flask import Flask

from tests.conftest import close_app, make_config, wait_until_the_app_waits_on_a_lock
from webapp import create_app

RETRY_LOG = "retrying the whole transaction"


def app_on(database_url: str, options: str) -> Flask:
    """The real app whose connections start with the given server options (libpq `options`)."""
    separator = "&" if "?" in database_url else "?"  # the embedded Postgres's URL has ?host=<socket dir>
    return create_app(make_config(f"{database_url}{separator}options={quote(options)}"))


@pytest.fixture
def shop(db) -> dict[str, int]:
    user = db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org') RETURNING id").fetchone()
    products = [
        db.execute(
            "INSERT INTO products (sku, name, price_cents, stock) VALUES (%s, %s, 100, 10) RETURNING id", (sku, sku)
        ).fetchone()[0]
        for sku in ("P1", "P2")
    ]
    return {"user": user[0], "p1": products[0], "p2": products[1]}


@pytest.fixture
def rival(database_url: str) -> Iterator[psycopg.Connection]:
    """The test's own competing transaction; it never waits longer than 5 s on anything."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SET statement_timeout = '5s'")
        conn.commit()
        yield conn
        conn.rollback()


@pytest.fixture
def retries(caplog: pytest.LogCaptureFixture) -> Any:
    """A function returning the whole-transaction retries logged so far."""
    caplog.set_level(logging.WARNING, logger="webapp.services.orders")
    return lambda: [r for r in caplog.records if RETRY_LOG in r.getMessage()]


def post_in_background(
    app: Flask, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def post() -> None:
        started = time.monotonic()
        response = app.test_client().post("/orders", json=body, headers=headers or {})
        outcome.update(status=response.status_code, body=response.json, seconds=time.monotonic() - started)

    thread = threading.Thread(target=post)
    thread.start()
    return thread, outcome


def order_into_a_deadlock(
    app: Flask, db, shop: dict[str, int], rival: psycopg.Connection, headers: dict[str, str] | None = None
) -> tuple[threading.Thread, dict[str, Any]]:
    """POST an order for P1 and P2 while the rival holds P2, then let the rival want P1: a lock cycle.

    The app (deadlock_timeout=300ms, see app_on) detects it long before the rival (10 s), so the
    app is the victim. Returns once the rival holds P1, i.e. once the app's attempt rolled back.
    """
    rival.execute("SET deadlock_timeout = '10s'")
    rival.execute("UPDATE products SET stock = stock WHERE id = %s", (shop["p2"],))
    order, outcome = post_in_background(
        app,
        {
            "user_id": shop["user"],
            "items": [{"product_id": shop["p1"], "quantity": 1}, {"product_id": shop["p2"], "quantity": 1}],
        },
        headers=headers,
    )
    wait_until_the_app_waits_on_a_lock(db)  # it holds P1 and waits for P2
    rival.execute("UPDATE products SET stock = stock WHERE id = %s", (shop["p1"],))
    return order, outcome


def stock(db, product_id: int) -> int:
    return db.execute("SELECT stock FROM products WHERE id = %s", (product_id,)).fetchone()[0]


def test_a_serialization_failure_is_retried_as_a_whole_transaction_and_the_order_happens_once(
    database_url: str, db, shop, rival, retries
):
    # REPEATABLE READ: a transaction that finds its row changed by a later commit cannot go
    # on (40001) - the failure every Postgres app running above READ COMMITTED must handle.
    app = app_on(database_url, "-c default_transaction_isolation=repeatable\\ read")
    try:
        rival.execute("UPDATE products SET stock = stock - 1 WHERE id = %s", (shop["p1"],))
        order, outcome = post_in_background(
            app, {"user_id": shop["user"], "items": [{"product_id": shop["p1"], "quantity": 2}]}
        )
        wait_until_the_app_waits_on_a_lock(db)  # its snapshot is taken: it checked the user first
        rival.commit()  # the row it waits for changes under its snapshot: 40001
        order.join(timeout=10)
    finally:
        close_app(app)
    assert outcome["status"] == 201, outcome
    assert len(retries()) == 1 and "40001" in retries()[0].getMessage()
    assert db.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    assert stock(db, shop["p1"]) == 10 - 1 - 2  # the rival's change and ours, each once


def test_a_deadlock_is_retried_as_a_whole_transaction_and_the_order_happens_once(
    database_url: str, db, shop, rival, retries
):
    app = app_on(database_url, "-c deadlock_timeout=300ms")
    try:
        order, outcome = order_into_a_deadlock(app, db, shop, rival)
        rival.commit()  # the retry now finds both rows free
        order.join(timeout=10)
    finally:
        close_app(app)
    assert outcome["status"] == 201, outcome
    assert len(retries()) == 1 and "40P01" in retries()[0].getMessage()
    assert db.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    assert (stock(db, shop["p1"]), stock(db, shop["p2"])) == (9, 9)


def test_a_client_error_is_never_retried(database_url: str, db, shop, retries):
    app = app_on(database_url, "-c default_transaction_isolation=repeatable\\ read")
    try:
        client = app.test_client()
        too_many = client.post(
            "/orders", json={"user_id": shop["user"], "items": [{"product_id": shop["p1"], "quantity": 11}]}
        )
        unknown = client.post("/orders", json={"user_id": 999, "items": [{"product_id": shop["p1"], "quantity": 1}]})
    finally:
        close_app(app)
    assert (too_many.status_code, unknown.status_code) == (409, 422)
    assert retries() == []
    assert db.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    assert stock(db, shop["p1"]) == 10


def test_a_retried_transaction_still_ends_within_the_clients_budget(database_url: str, db, shop, rival, retries):
    app = app_on(database_url, "-c deadlock_timeout=300ms")
    try:
        order, outcome = order_into_a_deadlock(app, db, shop, rival, {"X-Request-Timeout": "0.6"})  # ~0.3 s in
        # The rival now holds both rows and keeps them: the retry can only wait, and the
        # rest of the budget (not a fresh 10 s, not another full budget) is all it gets.
        order.join(timeout=10)
        rival.rollback()
    finally:
        close_app(app)
    assert len(retries()) == 1
    assert outcome["status"] == 504 and outcome["body"]["error"]["code"] == "deadline_exceeded", outcome
    assert outcome["seconds"] < 0.6 + 0.3
    assert db.execute("SELECT count(*) FROM orders").fetchone() == (0,)
