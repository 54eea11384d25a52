"""Real gunicorn processes for tests: start on a free loopback port, wait until ready, always kill.

    with run_gunicorn(database_url, workers=2) as server:
        status, headers, body = server.get("/readyz")
        server.send_signal(signal.SIGTERM)
        assert server.wait_exit() == 0
    server.log_lines()  # every stdout line, parsed as JSON (a line that is not JSON fails the test)

Also a bounded load client (LoadClient) that tells "never accepted" from "accepted, then lost".
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psycopg

from tests.conftest import scratch_database

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG_FILE = PROJECT_DIR / "gunicorn.conf.py"
# Test-only: the real app plus a /test/sleep/<seconds> route (tests/gunicorn_app.py).
SLOW_APP = "tests.gunicorn_app:create_app()"
# What gunicorn or our settings would read from the developer's shell: set explicitly below.
_CONTROLLED_ENV = (
    "DATABASE_URL", "REDIS_URL", "PORT", "BIND_HOST", "WEB_CONCURRENCY", "LOG_LEVEL", "PROMETHEUS_MULTIPROC_DIR",
    "METRICS_TOKEN", "SHUTDOWN_DRAIN_SECONDS", "GUNICORN_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT",
    "GUNICORN_CMD_ARGS", "GUNICORN_BACKLOG", "GUNICORN_MAX_REQUESTS", "PRESTOP_SECONDS", "STOP_WINDOW_SECONDS",
    "LOG_FORMAT", "WEBAPP_GUNICORN_SETTINGS", "SERVER_SOFTWARE", "CLIENT_READ_TIMEOUT",
)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A migrated database of its own, dropped at the end.

    Its own, so that "the pool is closed" can be checked exactly: pg_stat_activity then shows
    only the gunicorn workers' connections, not those of in-process apps from other tests.
    """
    with scratch_database(server_url, "webapp_gunicorn") as url:
        yield url


def app_connections(database_url: str) -> int:
    """How many Postgres sessions the app's pools (application_name 'webapp') hold on this database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'webapp'"
        ).fetchone()
    return int(row[0]) if row else 0


@dataclass
class GunicornServer:
    """A running gunicorn master (its own process group) and where its stdout goes."""

    process: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path
    metrics_dir: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(
        self, path: str, headers: dict[str, str] | None = None, timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """GET path on a new connection; return (status, headers, body)."""
        return request(self.port, "GET", path, headers=headers, timeout=timeout)

    def send_signal(self, sig: int) -> None:
        """Signal the master only (a platform signals the whole group; tests say which they mean)."""
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 15.0) -> int:
        """The master's exit status, waiting at most timeout seconds."""
        return self.process.wait(timeout=timeout)

    def log_text(self) -> str:
        return self.stdout_path.read_text()

    def stderr_text(self) -> str:
        return self.stderr_path.read_text()

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stdout line as a JSON object; a line that is not one raises (the test fails)."""
        lines = []
        for number, line in enumerate(self.log_text().splitlines(), 1):
            try:
                lines.append(json.loads(line))
            except ValueError as exc:
                raise AssertionError(f"stdout line {number} is not JSON: {line!r}") from exc
        return lines

    def messages(self, message: str) -> list[dict[str, Any]]:
        """The log lines whose message is exactly `message`."""
        return [line for line in self.log_lines() if line.get("message") == message]

    def wait_for_messages(self, message: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll stdout until `count` lines say `message`; fail after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(message)
            if len(found) >= count:
                return found
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"waited for {count} x {message!r}, saw {len(found)}; exit={self.process.poll()}\n"
                    f"stdout:\n{self.log_text()[-4000:]}\nstderr:\n{self.stderr_text()[-4000:]}"
                )
            time.sleep(0.05)


@contextmanager
def run_gunicorn(
    database_url: str,
    *,
    app: str = "webapp:create_app()",
    workers: int = 2,
    env: dict[str, str] | None = None,
    metrics_dir: Path | None = None,
) -> Iterator[GunicornServer]:
    """Start `gunicorn <app>` with gunicorn.conf.py on a free loopback port; kill its group at the end.

    Waits until every worker has logged "worker ready" and /livez answers. SHUTDOWN_DRAIN_SECONDS
    defaults to 0 here (tests that need a drain say so); LOG_LEVEL to info.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="webapp-gunicorn-") as tmp:
        out, err = Path(tmp) / "stdout.log", Path(tmp) / "stderr.log"
        metrics = metrics_dir or Path(tmp) / "metrics"
        child_env = {k: v for k, v in os.environ.items() if k not in _CONTROLLED_ENV}
        child_env.update({
            "DATABASE_URL": database_url, "PORT": str(port), "WEB_CONCURRENCY": str(workers),
            "LOG_LEVEL": "info", "PROMETHEUS_MULTIPROC_DIR": str(metrics), "SHUTDOWN_DRAIN_SECONDS": "0",
            "PYTHONUNBUFFERED": "1", "FLASK_SKIP_DOTENV": "1",  # nor a developer's .env in the checkout
        })
        child_env.update(env or {})
        command = [
            sys.executable, "-m", "gunicorn", "--config", str(CONFIG_FILE), "--bind", f"127.0.0.1:{port}", app,
        ]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            # Its own session: the test signals the master alone, and teardown can kill the group.
            process = subprocess.Popen(
                command, cwd=PROJECT_DIR, env=child_env, stdout=stdout, stderr=stderr, start_new_session=True,
            )
        server = GunicornServer(process, port, out, err, metrics)
        try:
            server.wait_for_messages("worker ready", workers)
            _wait_until_answering(server)
            yield server
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the workers too, whatever state the test left
            process.wait(timeout=10)


def _wait_until_answering(server: GunicornServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if server.get("/livez", timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"gunicorn never answered /livez\n{server.log_text()[-4000:]}")
        time.sleep(0.05)


def request(
    port: int, method: str, path: str, *, headers: dict[str, str] | None = None,
    body: bytes | None = None, timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new loopback connection; return (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@dataclass
class LoadResult:
    """What a LoadClient saw. `lost` are the requests that matter: connected, then no full answer."""

    ok: int = 0
    refused: int = 0  # the connection was never accepted (connection refused / connect timeout)
    lost: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)


class LoadClient:
    """Threads sending GET path, each on a new connection, until stopped, a count or a time limit.

    Bounded twice: at most max_requests in all and max_seconds of time. A thread also stops after
    a run of refused connections (the server is gone). Requests that connected but got no complete
    response (reset, closed early, read timeout) are recorded in `lost`, with the error.
    """

    def __init__(self, port: int, path: str, *, threads: int = 4, max_requests: int = 20_000,
                 max_seconds: float = 10.0, expect_status: int = 200):
        self.port, self.path, self.expect_status = port, path, expect_status
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        """Stop sending, wait for the threads, return the result."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.max_seconds + 15)
        return self.result

    def wait(self) -> LoadResult:
        """Wait until every thread ended by itself (count, time or a gone server)."""
        for thread in self._threads:
            thread.join(timeout=self.max_seconds + 15)
        return self.result

    def _claim(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self._sent >= self.max_requests:
                return False
            if time.monotonic() - self._started > self.max_seconds:
                return False
            self._sent += 1
            return True

    def _run(self) -> None:
        refused_in_a_row = 0
        while refused_in_a_row < 20 and self._claim():
            outcome = self._one()
            refused_in_a_row = refused_in_a_row + 1 if outcome == "refused" else 0
            if outcome == "refused":
                time.sleep(0.01)

    def _one(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
        try:
            try:
                conn.connect()
            except (ConnectionRefusedError, TimeoutError):
                with self._lock:
                    self.result.refused += 1
                return "refused"
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.result.lost.append(f"{type(exc).__name__}: {exc}")
                return "lost"
            with self._lock:
                self.result.statuses[response.status] = self.result.statuses.get(response.status, 0) + 1
                if response.status == self.expect_status:
                    self.result.ok += 1
                else:
                    self.result.lost.append(f"status {response.status}")
            return "ok"
        finally:
            conn.close()
