"""The deployed topology (bench/cluster.py): nginx from deploy/nginx.conf → 3 instances → PgBouncer → Postgres."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.cluster import Cluster
from bench.cluster_scenarios import created_ids, mixed
from bench.faultenv import tally
from bench.load import Load, count
from bench.nginx import nginx_binary
from bench.scenarios import failed
from tests.pgbouncer_server import require

pytestmark = pytest.mark.slow

# Short stop windows (valid together: see serving.stop_window_problems), so a restart takes ~1 s.
FAST_STOP = {"REQUEST_TIMEOUT": "2", "GUNICORN_TIMEOUT": "5", "GUNICORN_GRACEFUL_TIMEOUT": "10",
             "SHUTDOWN_DRAIN_SECONDS": "0.5", "LOG_LEVEL": "info"}


def test_a_rolling_restart_behind_nginx_fails_no_request_and_keeps_every_201(
    pgbouncer, database_url: str, db, tmp_path: Path,
) -> None:
    require("nginx", nginx_binary())  # and the pgbouncer fixture, PgBouncer
    for i in range(20):
        db.execute("INSERT INTO users (name, email) VALUES (%s, %s)", (f"U{i}", f"u{i}@example.org"))
    product = db.execute(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ('P', 'P', 100, 1000000) RETURNING id"
    ).fetchone()[0]
    with Cluster(database_url, tmp_path, instances=3, workers=1, env=FAST_STOP) as cluster:
        load = Load(cluster.port, mixed(users=20, product_id=product), threads=4, seconds=30).start()
        time.sleep(0.5)
        for i in range(len(cluster.ports)):
            cluster.restart(i)
        time.sleep(0.5)
        outcomes = load.stop()
    assert count(outcomes, failed) == 0, tally(outcomes)
    assert len(outcomes) > 50, tally(outcomes)
    created = created_ids(outcomes)
    stored = db.execute("SELECT count(*) FROM orders WHERE id = ANY(%s)", (created,)).fetchone()[0]
    assert created and stored == len(created)
