"""Dead workers' Prometheus files, folded into one archive file per kind so scrapes stay cheap.

prometheus_client's multiprocess mode writes one file per worker pid and kind (counter_<pid>.db,
histogram_<pid>.db, gauge_<mode>_<pid>.db) and a scrape reads them all. Every worker that dies
(timeout, max_requests, reload) leaves its files behind, and scrapes slow down with each one
(bench/README.md, "metrics churn"). The master (child_exit) folds each dead worker's files into
<kind>_archive.db, keeping every count exactly: counters, histograms and summaries summed, min/
max gauges as such, "mostrecent" the latest. `live*` gauges of the dead are dropped, as
prometheus_client's mark_process_dead does; "all" gauges are labelled by pid, so they stay.

Not public in prometheus_client: the file names and MmapedDict (prometheus_client.mmap_dict,
which its own collector uses to read and write these files). tests/integration/test_metrics_files.py
fails if either changes. Readers take the same lock (observability.metrics.LockedMultiProcessCollector).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

from prometheus_client import multiprocess
from prometheus_client.mmap_dict import MmapedDict

from webapp.observability.metrics import metrics_dir_lock

ARCHIVE = "archive"  # in place of a pid in the file name

_SUM: Callable[[float, float], float] = lambda a, b: a + b  # noqa: E731
# File name prefix (up to the pid) → how two values of one sample combine.
MERGE_RULES: dict[str, Callable[[float, float], float]] = {
    "counter": _SUM,
    "histogram": _SUM,  # bucket counts are stored per bucket (not cumulative), plus _sum: all add up
    "summary": _SUM,
    "gauge_sum": _SUM,
    "gauge_max": max,
    "gauge_min": min,
}
MOSTRECENT = "gauge_mostrecent"


def archive_dead_worker(path: str, pid: int) -> int:
    """Fold the dead worker pid's files in `path` into the archive files; return how many files went."""
    multiprocess.mark_process_dead(pid, path)  # its live* gauges: a dead worker has no pool
    folded = 0
    with metrics_dir_lock(path, fcntl.LOCK_EX):
        for prefix in (*MERGE_RULES, MOSTRECENT):
            dead = os.path.join(path, f"{prefix}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = os.path.join(path, f"{prefix}_{ARCHIVE}.db")
            merged = _read(archive) if os.path.exists(archive) else {}
            _fold(merged, _read(dead), prefix)
            _write(archive, merged)  # a new file renamed over the old: a reader sees one or the other
            os.remove(dead)
            folded += 1
    return folded


def _read(filename: str) -> dict[str, tuple[float, float]]:
    """{mmap key: (value, timestamp)} of one file."""
    return {key: (value, timestamp) for key, value, timestamp, _pos in MmapedDict.read_all_values_from_file(filename)}


def _fold(into: dict[str, tuple[float, float]], values: dict[str, tuple[float, float]], prefix: str) -> None:
    combine = MERGE_RULES.get(prefix)
    for key, (value, timestamp) in values.items():
        if key not in into:
            into[key] = (value, timestamp)
        elif combine is not None:
            into[key] = (combine(into[key][0], value), max(into[key][1], timestamp))
        elif timestamp >= into[key][1]:  # mostrecent: the later write wins
            into[key] = (value, timestamp)


def _write(filename: str, values: dict[str, tuple[float, float]]) -> None:
    temporary = filename + ".tmp"  # not *.db until complete
    if os.path.exists(temporary):
        os.remove(temporary)  # left by a master that died mid-write
    mmapped = MmapedDict(temporary)
    try:
        for key, (value, timestamp) in values.items():
            mmapped.write_value(key, value, timestamp)
    finally:
        mmapped.close()
    os.replace(temporary, filename)
