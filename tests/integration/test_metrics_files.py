"""Dead workers' metric files folded into archives (webapp/metrics_files.py), on real files in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from webapp.gunicorn import metrics_files
from webapp.observability.metrics import LockedMultiProcessCollector

BUCKETS = ("0.01", "0.1", "+Inf")


def write(path: Path, kind: str, pid: int | str, samples: list[tuple[str, str, dict[str, str], float]]) -> None:
    """One worker's file of `kind` (counter, histogram, gauge_max, ...), as prometheus_client writes it."""
    mmapped = MmapedDict(str(path / f"{kind}_{pid}.db"))
    for metric, name, labels, value in samples:
        mmapped.write_value(mmap_key(metric, name, list(labels), list(labels.values()), f"{metric} help"), value, 0.0)
    mmapped.close()


def a_worker(path: Path, pid: int, *, per_pid_gauge: bool = True) -> None:
    """What one worker of this service leaves behind: counts, latencies, pool and build gauges."""
    write(path, "counter", pid, [
        ("http_requests_total", "http_requests_total", {"path": "/a", "status": "200"}, pid % 7 + 1),
        ("http_requests_total", "http_requests_total", {"path": "/b", "status": "404"}, 1),
    ])
    write(path, "histogram", pid, [
        *[("latency", "latency_bucket", {"path": "/a", "le": le}, pid % 3) for le in BUCKETS],
        ("latency", "latency_sum", {"path": "/a"}, 0.25 * (pid % 5)),
    ])
    write(path, "gauge_livesum", pid, [("pool", "pool", {"state": "size"}, 2)])
    write(path, "gauge_max", pid, [("build", "build", {"version": "1"}, pid % 4)])
    if per_pid_gauge:
        write(path, "gauge_all", pid, [("per_worker", "per_worker", {}, pid)])


def scrape(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_archiving_dead_workers_keeps_every_count_exactly_and_leaves_few_files(tmp_path: Path):
    dead, alive = range(1000, 1060), range(5000, 5002)
    for pid in (*dead, *alive):
        a_worker(tmp_path, pid)
    before = scrape(tmp_path)

    for pid in dead:
        metrics_files.archive_dead_worker(str(tmp_path), pid)
    after = scrape(tmp_path)

    pool = ("pool", frozenset({("state", "size")}))
    assert before.pop(pool) == 2 * 62 and after.pop(pool) == 2 * 2  # the dead hold no connections
    assert after == before  # counters, histograms, max and per-pid gauges: every value as it was
    files = sorted(name for name in os.listdir(tmp_path) if not name.startswith("gauge_all_"))
    assert files == sorted([
        "archive.lock", "counter_archive.db", "histogram_archive.db", "gauge_max_archive.db",
        *[f"{kind}_{pid}.db" for pid in alive for kind in ("counter", "histogram", "gauge_livesum", "gauge_max")],
    ])


def test_a_later_death_adds_to_the_archive(tmp_path: Path):
    requests = ("http_requests_total", frozenset({("path", "/a"), ("status", "200")}))
    for pid in (1, 2):
        a_worker(tmp_path, pid)
    metrics_files.archive_dead_worker(str(tmp_path), 1)
    a_worker(tmp_path, 3)  # a replacement, started after the archive was written
    metrics_files.archive_dead_worker(str(tmp_path), 2)
    metrics_files.archive_dead_worker(str(tmp_path), 3)
    metrics_files.archive_dead_worker(str(tmp_path), 4)  # never wrote anything: nothing to do
    assert scrape(tmp_path)[requests] == 2 + 3 + 4
    assert not [name for name in os.listdir(tmp_path) if name.startswith("counter_") and "archive" not in name]


def test_the_locked_collector_reads_the_same_as_prometheus_clients(tmp_path: Path):
    for pid in (1, 2):
        a_worker(tmp_path, pid)
    metrics_files.archive_dead_worker(str(tmp_path), 1)
    registry = CollectorRegistry()
    LockedMultiProcessCollector(registry, path=str(tmp_path))
    assert generate_latest(registry).decode() == generate_latest(_plain(tmp_path)).decode()


def _plain(path: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    return registry


@pytest.mark.parametrize("kind", ["counter", "histogram", "summary", "gauge_sum", "gauge_max", "gauge_min"])
def test_every_kind_prometheus_client_combines_across_files_has_an_archive_rule(kind: str):
    assert kind in metrics_files.MERGE_RULES
