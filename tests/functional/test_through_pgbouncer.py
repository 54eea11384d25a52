"""The service with DATABASE_URL pointing at a real PgBouncer in transaction mode, 3 server connections shared.

Transaction pooling hands each transaction (each autocommit statement) to whichever server
connection is free. So the app must keep no state on a connection between transactions: no
server-side prepared statements (PgBouncer 1.18 cannot route them), no session SET (it would leak
to the next client of that server connection). These tests fail with `prepared statement "_pg3_N"
does not exist`, a leaked statement_timeout, or a lock wait that ignores the deadline otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import psycopg
import pytest
from flask import Flask

from bench.load import RequestSpec, fire_at_once, send
from bench.pgbouncer import PgBouncer
from tests.conftest import close_app, make_config

# The API's own tests, collected again here: pytest resolves their `app`, `client` and `shop`
# fixtures from this module, so the same specifications run against the app through PgBouncer.
from tests.functional.test_api import (  # noqa: F401  (imported to be collected)
    test_a_created_user_can_be_fetched,
    test_a_product_can_be_created_and_fetched,
    test_a_users_orders_are_listed,
    test_an_order_commits_its_rows_and_its_stock_change_together,
    test_default_page_size_is_twenty,
    test_insufficient_stock_is_409_naming_the_product_and_changes_nothing,
    test_users_list_with_keyset_pagination,
)
from tests.functional.test_idempotency import (  # noqa: F401
    app_for_concurrent_requests,
    shop,
    test_fifty_concurrent_requests_with_one_key_place_exactly_one_order,
    test_while_the_first_request_is_in_flight_the_others_get_409_then_replays,
)
from tests.gunicorn_server import GunicornServer, run_gunicorn
from tests.pgbouncer_server import server_settings
from webapp import create_app

DEADLINE_MARGIN = 0.5
GRACE = 0.5  # specified, not imported: a silent server gets this long past the deadline, then is cut


@pytest.fixture
def app(pgbouncer_url: str, db) -> Iterator[Flask]:
    """The real app through PgBouncer, as the idempotency tests build it."""
    app = app_for_concurrent_requests(pgbouncer_url)
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask):
    return app.test_client()


@pytest.fixture(scope="module")
def gunicorn(pgbouncer_url: str) -> Iterator[GunicornServer]:
    """Real gunicorn, 3 workers (3 pools) through the same PgBouncer: processes share server connections."""
    with run_gunicorn(pgbouncer_url, workers=3, env={"REQUEST_TIMEOUT": "5"}) as server:
        yield server


def a_user_and_a_product(db, stock: int) -> tuple[int, int]:
    user = db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org') RETURNING id").fetchone()[0]
    product = db.execute(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ('P1', 'P1', 100, %s) RETURNING id", (stock,)
    ).fetchone()[0]
    return user, product


def order_on_a_locked_product(
    app: Flask, database_url: str, body: dict[str, Any], headers: dict[str, str], give_up_after: float,
) -> tuple[int | None, float]:
    """POST /orders while another (direct) connection holds the product row FOR UPDATE; (status, seconds).

    The rival lets go after give_up_after seconds at the latest, so a request that ignores its
    deadline ends the test instead of hanging it; its status is then None.
    """
    with psycopg.connect(database_url) as rival, ThreadPoolExecutor(1) as pool:
        rival.execute("SELECT 1 FROM products WHERE id = %s FOR UPDATE", (body["items"][0]["product_id"],))
        started = time.monotonic()
        future = pool.submit(app.test_client().post, "/orders", json=body, headers=headers)
        try:
            status: int | None = future.result(timeout=give_up_after).status_code
        except FutureTimeout:
            status = None
        elapsed = time.monotonic() - started
        rival.rollback()
    return status, elapsed


@pytest.mark.parametrize(
    ("env", "headers"),
    [({"REQUEST_TIMEOUT": "1"}, {}), ({"REQUEST_TIMEOUT": "10"}, {"X-Request-Timeout": "1"})],
    ids=["REQUEST_TIMEOUT", "X-Request-Timeout"],
)
def test_an_order_waiting_on_a_row_locked_past_the_deadline_is_a_504_at_the_deadline(
    pgbouncer_url: str, database_url: str, db, apps: list[Flask], env: dict[str, str], headers: dict[str, str],
) -> None:
    user, product = a_user_and_a_product(db, stock=10)
    app = create_app(make_config(pgbouncer_url, **env))
    apps.append(app)
    body = {"user_id": user, "items": [{"product_id": product, "quantity": 1}]}
    # Three tries: with 3 server connections in rotation, a deadline kept on one connection
    # (a session SET) rather than in the transaction would be missing on some of them.
    for _ in range(3):
        status, seconds = order_on_a_locked_product(app, database_url, body, headers, give_up_after=4.0)
        assert status == 504, f"got {status} after {seconds:.2f} s"
        assert 1.0 - DEADLINE_MARGIN <= seconds <= 1.0 + DEADLINE_MARGIN, seconds
    assert db.execute("SELECT count(*) FROM orders").fetchone() == (0,)


def test_100_concurrent_orders_on_stock_20_through_gunicorn_and_pgbouncer_sell_exactly_20(
    gunicorn: GunicornServer, db,
) -> None:
    user, product = a_user_and_a_product(db, stock=20)
    specs: list[RequestSpec] = [
        ("POST", "/orders", {"user_id": user, "items": [{"product_id": product, "quantity": 1}]})
    ] * 100
    statuses = sorted(o.status for o in fire_at_once(gunicorn.port, specs))
    assert statuses == [201] * 20 + [409] * 80, statuses
    assert db.execute("SELECT stock FROM products WHERE id = %s", (product,)).fetchone() == (0,)
    assert db.execute("SELECT count(*), coalesce(sum(quantity), 0) FROM order_items").fetchone() == (20, 20)


def test_after_the_apps_traffic_another_client_of_the_pool_sees_default_settings_and_no_errors_were_logged(
    gunicorn: GunicornServer, pgbouncer: PgBouncer, pgbouncer_url: str, db,
) -> None:
    user, product = a_user_and_a_product(db, stock=1000)
    order: RequestSpec = ("POST", "/orders", {"user_id": user, "items": [{"product_id": product, "quantity": 1}]})
    # Both deadline paths (the default one and a client's shorter budget), reads and writes, 10 times
    # each per worker connection at least: psycopg would have prepared them by the 5th.
    for i in range(60):
        for spec in (order, ("GET", f"/users/{user}", None), ("GET", f"/products/{product}", None)):
            budget = {"X-Request-Timeout": "3"} if i % 2 else {}  # the SET LOCAL path, and the default one
            outcome = send(gunicorn.port, (*spec[:3], budget), timeout=10)
            assert outcome.status in (200, 201), (outcome.status, outcome.body)
    assert server_settings(pgbouncer_url, "statement_timeout", tries=12) == ["0"] * 12
    assert server_settings(pgbouncer_url, "idle_in_transaction_session_timeout", tries=6) == ["0"] * 6
    logs = gunicorn.log_text() + gunicorn.stderr_text() + pgbouncer.log_text()
    assert "_pg3_" not in logs and "DuplicatePreparedStatement" not in logs  # psycopg's statement names
    # DB_PREPARED_STATEMENTS=auto saw the pooler: each worker said so once.
    pooled = [line for line in gunicorn.log_lines() if line.get("prepared_statements") is False]
    assert pooled and all("through a pooler" in line["message"] for line in pooled)
    assert not [line for line in gunicorn.log_lines() if line.get("level") in ("ERROR", "CRITICAL")]



def test_while_pgbouncer_is_paused_requests_end_at_their_deadline_then_fail_fast_then_recover_by_themselves(
    pgbouncer: PgBouncer, pgbouncer_url: str, db, apps: list[Flask],
) -> None:
    user, _product = a_user_and_a_product(db, stock=1)
    app = create_app(make_config(pgbouncer_url, REQUEST_TIMEOUT="1", DB_BREAKER_RESET_AFTER="1"))
    apps.append(app)
    client = app.test_client()
    assert client.get(f"/users/{user}").status_code == 200
    # PAUSE: PgBouncer keeps every client's connection but holds its next query until RESUME, so only
    # the app's own clock can end the request (a server-side statement_timeout never starts).
    pgbouncer.pause()
    with ThreadPoolExecutor(1) as pool:
        try:
            started = time.monotonic()
            future = pool.submit(client.get, f"/users/{user}")
            try:
                first = future.result(timeout=3.0)
            except FutureTimeout:
                first = None
            seconds = time.monotonic() - started
            # The silence opened the database breaker: the next request is refused at once.
            started = time.monotonic()
            second = client.get(f"/users/{user}")
            fail_fast = time.monotonic() - started
        finally:
            pgbouncer.resume()  # also frees a request that ignored its deadline, so the test ends
    assert first is not None, f"still waiting after {seconds:.1f} s: the request had no client-side deadline"
    assert first.status_code == 504 and first.get_json()["error"]["code"] == "deadline_exceeded"
    assert seconds <= 1.0 + GRACE + DEADLINE_MARGIN
    assert second.status_code == 503 and second.headers.get("Retry-After") == "1"
    assert second.get_json()["error"]["code"] == "service_unavailable"
    assert fail_fast < 0.2
    deadline = time.monotonic() + 5
    while client.get(f"/users/{user}").status_code != 200:  # back without a restart
        assert time.monotonic() < deadline, "no recovery within 5 s of RESUME"
        time.sleep(0.1)
