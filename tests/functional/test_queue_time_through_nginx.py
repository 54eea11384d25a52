"""Through nginx with deploy/nginx.conf, the deadline runs from when nginx received the request (X-Request-Start).

Issue 22's row-lock burst, scaled down (bench/queue_scenario.py): a product row locked for 12 s, 8 POST /orders
for it at once and an unrelated GET 1 s later, 1 instance of 2 sync workers, REQUEST_TIMEOUT=4. Before, the
queued POSTs each waited a budget of their own after queueing (answers at 8 s and 12 s) and the GET waited for
the lock (11 s); `make fault` (queue_time_row_lock) measures both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cluster import Cluster
from bench.nginx import nginx_binary
from bench.queue_scenario import LOCK_SECONDS, POSTS, REQUEST_TIMEOUT, SETTINGS, SLACK, row_lock_burst
from tests.pgbouncer_server import require

pytestmark = pytest.mark.slow


def test_behind_nginx_nothing_waits_past_its_budget_counted_from_when_nginx_received_it(
    pgbouncer, database_url: str, db, tmp_path: Path,
) -> None:
    require("nginx", nginx_binary())  # and the pgbouncer fixture, PgBouncer
    user = db.execute("INSERT INTO users (name, email) VALUES ('U', 'u@example.org') RETURNING id").fetchone()[0]
    product = db.execute(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ('P', 'P', 100, 1000) RETURNING id"
    ).fetchone()[0]
    with Cluster(database_url, tmp_path, instances=1, workers=2, env=SETTINGS) as cluster:
        run = row_lock_burst(cluster.port, database_url, product_id=product, user_id=user)

    assert all(o.kind == "response" for o in run.answers), run.numbers()
    # Nothing answered later than the budget after nginx received it (the client's send, on loopback).
    assert max(o.elapsed for o in [*run.posts, run.get]) <= REQUEST_TIMEOUT + SLACK, run.numbers()
    # The two POSTs the workers took wait for the lock until their deadline; the six queued behind them are
    # answered the moment a worker frees: 503 queued_too_long + Retry-After when their budget ran out in the
    # queue, or a 504 at once when a few milliseconds of it were left.
    first_freed = min(o.ended for o in run.posts)
    assert max(o.ended for o in run.posts) - first_freed <= SLACK, run.numbers()
    assert run.queued_out(), run.numbers()
    assert sorted({o.status for o in run.posts}) in ([503, 504], [504]), run.numbers()
    assert all(o.retry_after == "1" for o in run.posts if o.status == 503)
    # The unrelated GET is served by the first free worker, long before the lock is released.
    assert run.get.status == 200, run.numbers()
    assert run.get.ended - first_freed <= SLACK < run.released_at - run.get.ended, run.numbers()
    assert run.released_at - run.sent_at >= LOCK_SECONDS - 0.1
    # Resent with their Idempotency-Keys after the lock: every order placed, and every 201 stored once.
    created = run.created()
    assert len(created) == len(set(created)) == POSTS == run.orders_stored, run.numbers()
