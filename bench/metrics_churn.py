"""`python -m bench.metrics_churn DEAD [FOLDER]`: scrape cost with DEAD dead workers' metric files, before
and after webapp.gunicorn.metrics_files folds them into archives (in a temporary folder under FOLDER, e.g. /dev/shm)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from webapp.gunicorn import metrics_files


def a_worker(folder: Path, pid: int) -> None:
    """The files one worker of this service leaves: request counts, latencies, pool and build gauges."""
    shapes = {
        "counter": [("http_requests_total", "http_requests_total", {"path": "/users", "status": "200"})],
        "histogram": [("latency", "latency_bucket", {"path": "/users", "le": le}) for le in ("0.01", "0.1", "+Inf")]
        + [("latency", "latency_sum", {"path": "/users"})],
        "gauge_livesum": [("pool", "pool", {"state": "size"})],
        "gauge_max": [("build", "build", {"version": "1"})],
    }
    for kind, samples in shapes.items():
        mmapped = MmapedDict(str(folder / f"{kind}_{pid}.db"))
        for metric, name, labels in samples:
            mmapped.write_value(mmap_key(metric, name, list(labels), list(labels.values()), "help"), 1.0, 0.0)
        mmapped.close()


def scrape_ms(folder: Path) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    generate_latest(registry)  # warm the page cache: the second one is timed
    started = time.perf_counter()
    generate_latest(registry)
    return (time.perf_counter() - started) * 1000


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_churn", description=__doc__)
    p.add_argument("dead", type=int, help="how many dead workers' metric files to leave")
    p.add_argument("folder", nargs="?", help="where the temporary folder goes (e.g. /dev/shm; default: the system's)")
    args = p.parse_args(argv)
    dead = args.dead
    with tempfile.TemporaryDirectory(dir=args.folder) as name:
        folder = Path(name)
        for pid in (1, 2):
            a_worker(folder, pid)  # the live workers
        quiet = scrape_ms(folder)
        for pid in range(1000, 1000 + dead):
            a_worker(folder, pid)
        churned = scrape_ms(folder)
        started = time.perf_counter()
        for pid in range(1000, 1000 + dead):
            metrics_files.archive_dead_worker(name, pid)
        fold_ms = (time.perf_counter() - started) * 1000 / dead
        print(f"scrape with 2 live workers only: {quiet:.1f} ms; with {dead} dead workers' files: {churned:.1f} ms; "
              f"after folding them ({fold_ms:.2f} ms each): {scrape_ms(folder):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
