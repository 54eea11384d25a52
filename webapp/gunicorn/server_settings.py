"""gunicorn's settings read from the environment, as pure functions; webapp/gunicorn/settings.py applies them.

Kept apart from that module because importing it has effects (it sets up the master); these
functions can be called and tested with any mapping and any fake cgroup tree.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marshmallow.validate import OneOf, Range

from webapp.gunicorn.worker import WORKER_LAG_SECONDS
from webapp.settings import LOG_FORMATS, LOG_LEVELS, SETTING, ConfigError, MappingEnv

# Heroku SIGKILLs 30 s after SIGTERM; so does Kubernetes by default (terminationGracePeriodSeconds).
STOP_WINDOW_SECONDS: float = SETTING["STOP_WINDOW_SECONDS"].default


@dataclass(frozen=True)
class ServerSettings:
    """What gunicorn is told: where to listen, how many workers, how long a request and a stop may take."""

    bind_host: str
    port: int
    workers: int
    timeout: int
    graceful_timeout: int
    drain_seconds: float
    client_read_timeout: float
    prestop_seconds: float
    stop_window: float
    backlog: int
    max_requests: int
    log_level: str
    log_format: str


def load_server_settings(environ: Mapping[str, str], *, cpus: int) -> ServerSettings:
    """Read and check gunicorn's variables; raise ConfigError naming every bad one (never a traceback)."""
    env = MappingEnv(environ)
    values: dict[str, Any] = dict(
        bind_host=env.setting("BIND_HOST"),  # all interfaces, as a platform's router needs
        port=env.setting("PORT", validate=Range(1, 65535)),
        # Sync workers wait on Postgres, so more workers than cores.
        workers=env.setting("WEB_CONCURRENCY", 2 * cpus + 1, validate=Range(1, 1000)),
        timeout=env.setting("GUNICORN_TIMEOUT"),
        graceful_timeout=env.setting("GUNICORN_GRACEFUL_TIMEOUT"),
        drain_seconds=env.setting("SHUTDOWN_DRAIN_SECONDS"),
        # A request's headers and body must all arrive this many seconds after accept, or the client
        # gets a JSON 408 (nginx's client_header/body_timeout): a slow client holds a sync worker.
        client_read_timeout=env.setting("CLIENT_READ_TIMEOUT"),
        prestop_seconds=env.setting("PRESTOP_SECONDS", validate=Range(0, 600)),
        stop_window=env.setting("STOP_WINDOW_SECONDS", validate=Range(1, 3600)),
        # Bounded: past it the kernel drops new SYNs (clients retry) instead of queueing work we cannot reach.
        backlog=env.setting("GUNICORN_BACKLOG", validate=Range(1, 65535)),
        max_requests=env.setting("GUNICORN_MAX_REQUESTS", validate=Range(0, 10_000_000)),
        log_level=env.setting("LOG_LEVEL", validate=OneOf(LOG_LEVELS)),
        log_format=env.setting("LOG_FORMAT", validate=OneOf(LOG_FORMATS)),
    )
    problems = env.problems()
    if not problems and values["client_read_timeout"] is None:
        # Default 5 s, or half the worker timeout if shorter: the read must end before gunicorn's kill.
        values["client_read_timeout"] = min(5.0, values["timeout"] / 2)
    if not problems and not 0 < values["client_read_timeout"] < values["timeout"]:
        # Else gunicorn's timeout kills a worker still waiting for a slow client (CRITICAL, SIGKILL).
        problems["CLIENT_READ_TIMEOUT"] = ["must be above 0 and below GUNICORN_TIMEOUT"]
    if not problems:
        problems = stop_window_problems(
            timeout=values["timeout"], graceful_timeout=values["graceful_timeout"],
            drain_seconds=values["drain_seconds"], prestop_seconds=values["prestop_seconds"],
            window=values["stop_window"],
        )
    if problems:
        raise ConfigError(problems)
    return ServerSettings(**values)


def stop_window_problems(*, timeout: int, graceful_timeout: int, drain_seconds: float,
                         prestop_seconds: float = 0.0, window: float = STOP_WINDOW_SECONDS) -> dict[str, list[str]]:
    """Every reason a request could not end, or the whole stop not fit, before the platform's SIGKILL."""
    problems: dict[str, list[str]] = {}
    if timeout < 1:
        problems["GUNICORN_TIMEOUT"] = ["must be at least 1 s (0 would let a stuck worker hang forever)"]
    elif timeout > graceful_timeout:
        # Else a request still running at SIGTERM is SIGKILLed mid-way: no answer, not even our 504.
        problems["GUNICORN_TIMEOUT"] = ["must not exceed GUNICORN_GRACEFUL_TIMEOUT"]
    if not 0 <= drain_seconds <= 10:
        problems["SHUTDOWN_DRAIN_SECONDS"] = ["must be between 0 and 10"]
    # A preStop hook (Kubernetes) runs before SIGTERM, inside the same terminationGracePeriodSeconds.
    if prestop_seconds + drain_seconds + WORKER_LAG_SECONDS + graceful_timeout > window - 1:
        problems["GUNICORN_GRACEFUL_TIMEOUT"] = [
            f"PRESTOP_SECONDS + SHUTDOWN_DRAIN_SECONDS + {WORKER_LAG_SECONDS:g} + GUNICORN_GRACEFUL_TIMEOUT "
            f"must stay under the {window:g} s stop window (STOP_WINDOW_SECONDS) minus 1 s"
        ]
    return problems


def usable_cpus(root: Path = Path("/"), affinity: int | None = None) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container's --cpus, limits.cpu)."""
    affinity = affinity or len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(root)
    # Trap: sched_getaffinity does not see a CFS quota, so a 1-CPU container on a 32-core node
    # would otherwise start 65 workers, all throttled.
    return max(1, min(affinity, math.ceil(quota))) if quota is not None else affinity


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """The CPU quota (quota / period) of this process's cgroup and its ancestors, or None when there is none.

    root is the filesystem root, so tests pass a fake tree. cgroup v2: cpu.max ("max 100000" or
    "50000 100000"); v1: cpu.cfs_quota_us (-1 for none) and cpu.cfs_period_us. The smallest quota
    on the way up to the mount point wins, as the kernel enforces every level.
    """
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mounts = root / "sys/fs/cgroup"
    entries: dict[str, str] = {}
    for line in lines:
        _hierarchy, controllers, path = line.split(":", 2)
        entries[controllers] = path
    # cgroup v1 ("4:cpu,cpuacct:/path") first: a hybrid host also lists "0::/path", without the cpu controller.
    for controllers, path in entries.items():
        if "cpu" in controllers.split(","):
            for mount in (mounts / controllers, mounts / "cpu,cpuacct", mounts / "cpu"):
                if mount.is_dir():
                    return _smallest_quota(mount, path, _v1_quota)
    if "" in entries:  # cgroup v2: "0::/path"
        return _smallest_quota(mounts, entries[""], _v2_quota)
    return None


def _smallest_quota(mount: Path, path: str, read: Callable[[Path], float | None]) -> float | None:
    """Walk from the process's cgroup folder up to the mount point; return the smallest quota found."""
    # In a container (a cgroup namespace) the path is "/" or, with v1, the host's path, which
    # does not exist under the container's mount: then the mount point itself is the cgroup.
    folder = mount / path.lstrip("/")
    if not folder.is_dir():
        folder = mount
    quotas = []
    while True:
        quota = read(folder)
        if quota is not None:
            quotas.append(quota)
        if folder == mount or mount not in folder.parents:
            break
        folder = folder.parent
    return min(quotas) if quotas else None


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
