"""The Prometheus multiprocess folder across real processes: wiped at start, a dead worker's gauges dropped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from webapp.gunicorn import hooks


def write_worker_metrics(metrics_dir: Path) -> int:
    """Run a 'worker' process that counts a request and sets the pool gauges; return its pid."""
    code = (
        "import os\n"
        "from webapp.observability.metrics import Metrics\n"
        f"m = Metrics({str(metrics_dir)!r})\n"
        "m.watch_pool(lambda: {'size': 2, 'available': 2, 'waiting': 0})\n"
        "m.observe_request('GET', '/livez', 200, 0.01)\n"
        "print(os.getpid())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    done = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True, timeout=30)
    return int(done.stdout)


def scrape(metrics_dir: Path) -> str:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    return generate_latest(registry).decode()


def test_wipe_metrics_dir_leaves_an_empty_folder(tmp_path: Path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    write_worker_metrics(metrics_dir)
    assert scrape(metrics_dir).count("http_requests_total{") == 1

    hooks.wipe_metrics_dir(str(metrics_dir))
    assert metrics_dir.is_dir() and not list(metrics_dir.iterdir())
    hooks.wipe_metrics_dir(None)  # single-process mode: nothing to do


def test_child_exit_drops_a_dead_workers_live_gauges_but_keeps_its_counts(tmp_path: Path, monkeypatch):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    pid = write_worker_metrics(metrics_dir)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    assert 'db_pool_connections{state="size"} 2.0' in scrape(metrics_dir)

    hooks.child_exit(server=None, worker=SimpleNamespace(pid=pid))

    text = scrape(metrics_dir)
    assert 'db_pool_connections{state="size"}' not in text  # a dead worker holds no connections
    assert 'http_requests_total{method="GET",path="/livez",status="200"} 1.0' in text  # what it served, stays


