"""/metrics: the seed's names with route-template labels, who may read it, and correct sums
across gunicorn's worker processes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_config
from tests.gunicorn_server import fresh_database, run_gunicorn
from webapp import create_app

USER_ROUTE = "/users/<id:user_id>"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} from the Prometheus text format."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, metric: str, **labels: str) -> float | None:
    return samples(text).get((metric, frozenset(labels.items())))


def build(apps: list[Flask], database_url: str, **env: str) -> Flask:
    app = create_app(make_config(database_url, **env))
    apps.append(app)
    return app


def test_requests_are_counted_under_the_seed_names_by_route_template(client):
    for user_id in (424242, 434343):
        client.get(f"/users/{user_id}")
    client.get("/no/such/thing/1")
    client.get("/no/such/thing/2")

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    assert response.headers["Content-Type"].count("charset") == 1
    text = response.get_data(as_text=True)
    assert value(text, "http_requests_total", method="GET", path=USER_ROUTE, status="404") == 2
    assert value(text, "http_requests_total", method="GET", path="<unmatched>", status="404") == 2
    assert value(text, "http_request_duration_seconds_count", method="GET", path=USER_ROUTE) == 2
    assert value(text, "http_request_duration_seconds_bucket", method="GET", path=USER_ROUTE, le="+Inf") == 2
    assert value(text, "db_pool_connections", state="size") is not None
    assert "/users/424242" not in text  # raw paths would make one series per user


def test_the_build_info_gauge_names_the_running_version(client):
    text = client.get("/metrics").get_data(as_text=True)
    (info,) = [labels for (name, labels), v in samples(text).items() if name == "webapp_info" and v == 1]
    assert {"version", "python"} <= dict(info).keys()


def test_the_breaker_state_is_exported_when_redis_is_configured(database_url: str, db, redis_url: str, apps):
    app = build(apps, database_url, REDIS_URL=redis_url)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert value(text, "circuit_breaker_state", name="redis") == 0  # closed


def test_the_database_breakers_state_is_exported_from_the_start(client):
    text = client.get("/metrics").get_data(as_text=True)
    assert value(text, "circuit_breaker_state", name="database") == 0  # closed, before it ever moved


def test_without_a_token_only_loopback_callers_may_read_metrics(client):
    assert client.get("/metrics").status_code == 200
    outside = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert outside.status_code == 404  # not even admitted to exist
    assert "http_requests_total" not in outside.get_data(as_text=True)


@pytest.mark.parametrize("header, value", [
    ("X-Forwarded-For", "203.0.113.9"),
    ("Forwarded", "for=203.0.113.9"),
    ("X-Real-IP", "203.0.113.9"),
    ("X-Forwarded-Host", "api.example.com"),
])
def test_without_a_token_a_request_that_came_through_a_proxy_is_refused_even_from_loopback(
        client, header: str, value: str):
    # A proxy on the same host makes every client look like loopback; its headers give it away.
    refused = client.get("/metrics", headers={header: value})
    assert refused.status_code == 404
    assert "http_requests_total" not in refused.get_data(as_text=True)


def test_refused_scrapes_are_counted_and_logged_at_warning_at_most_once_a_minute(client, caplog):
    with caplog.at_level(logging.WARNING, logger="webapp.metrics"):
        for _ in range(3):
            assert client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 404
        assert client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 404
    warnings = [r for r in caplog.records if r.name == "webapp.metrics"]
    assert [(r.levelname, r.getMessage(), r.reason) for r in warnings] == [
        ("WARNING", "refused a /metrics request", "proxied")
    ]
    text = client.get("/metrics").get_data(as_text=True)
    assert value(text, "metrics_scrapes_refused_total", reason="proxied") == 3
    assert value(text, "metrics_scrapes_refused_total", reason="not_loopback") == 1


def test_with_a_token_only_its_bearer_may_read_metrics_even_from_loopback(database_url: str, db, apps):
    client = build(apps, database_url, METRICS_TOKEN="scrape-me-7f3a").test_client()
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 404
    assert client.get("/metrics", headers={"Authorization": "scrape-me-7f3a"}).status_code == 404
    granted = client.get(
        "/metrics", headers={"Authorization": "Bearer scrape-me-7f3a"}, environ_base={"REMOTE_ADDR": "203.0.113.9"}
    )
    assert granted.status_code == 200


def test_two_apps_in_one_process_count_separately(database_url: str, db, apps):
    first, second = (build(apps, database_url).test_client() for _ in range(2))
    first.get("/users/424242")
    text = second.get("/metrics").get_data(as_text=True)
    assert value(text, "http_requests_total", method="GET", path=USER_ROUTE, status="404") is None


# --- under gunicorn ------------------------------------------------------------------------------


def write_stale_counter(metrics_dir: Path, count: int) -> None:
    """What a previous run leaves behind: a worker's counter file, written by another process."""
    code = (
        "from webapp.observability.metrics import Metrics\n"
        f"m = Metrics({str(metrics_dir)!r})\n"
        f"m.requests.labels('GET', {USER_ROUTE!r}, '404').inc({count})\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)


@pytest.mark.slow
def test_under_gunicorn_every_worker_reports_the_sum_of_all_workers(server_url: str, tmp_path: Path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    write_stale_counter(metrics_dir, 1000)  # must be wiped when gunicorn starts
    requests = 60
    with fresh_database(server_url) as database_url, \
            run_gunicorn(database_url, workers=4, metrics_dir=metrics_dir, env={"LOG_LEVEL": "debug"}) as server:
        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(lambda n: server.get(f"/users/{900000 + n}")[0], range(requests)))
        assert statuses == [404] * requests

        def scrape(_: int) -> str:
            return server.get("/metrics")[2].decode()

        with ThreadPoolExecutor(max_workers=4) as pool:
            scrapes = list(pool.map(scrape, range(12)))
        counts = {value(text, "http_requests_total", method="GET", path=USER_ROUTE, status="404") for text in scrapes}
        assert counts == {requests}  # from whichever worker answered: all workers' counts, nothing stale

        lines = server.log_lines()
        served_by = {line["pid"] for line in lines if line.get("raw_path", "").startswith("/users/")}
        scraped_from = {line["pid"] for line in lines if line.get("raw_path") == "/metrics"}
        assert len(served_by) >= 2 and len(scraped_from) >= 2  # the sums really crossed processes

        # A reload replaces every worker: their counts stay (folded into one archive file per
        # kind, webapp/metrics_files.py), their live gauges (pool sizes) go.
        old_workers = {line["pid"] for line in server.messages("worker ready")}
        server.send_signal(signal.SIGHUP)
        server.wait_for_messages("worker stopped", 4)
        # Every old worker's files, not only those that served /users: a scrape racing the fold of a
        # file it listed fails (until Metrics.render reads under metrics_files' lock).
        dead_files = [metrics_dir / f"{kind}_{pid}.db" for pid in old_workers for kind in ("gauge_livesum", "counter")]
        deadline = time.monotonic() + 5  # child_exit runs in the master once it has reaped the worker
        while any(path.exists() for path in dead_files) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [path.name for path in dead_files if path.exists()]
        assert (metrics_dir / "counter_archive.db").exists()
        text = server.get("/metrics")[2].decode()
        assert value(text, "http_requests_total", method="GET", path=USER_ROUTE, status="404") == requests
