"""Start and stop the processes under test: gunicorn serving ours or the baseline, on loopback."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

PROJECT_DIR = Path(__file__).resolve().parent.parent
OURS_APP = "webapp:create_app()"
BASELINE_APP = "bench.baseline_app:create_app()"
# The choice gunicorn.conf.py makes for files written on every request (metrics, heartbeat):
# tmpfs when the machine has one. The bench uses it for both servers so it measures the defaults.
SCRATCH_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET on loopback; returns (status, body). Raises OSError when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def children(pid: int) -> list[int]:
    """Direct children of pid (gunicorn's workers), from /proc."""
    try:
        return [
            int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    except FileNotFoundError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time pid has used so far (from /proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf(
        "SC_CLK_TCK"
    )  # utime, stime


def postgres_cpu_seconds() -> float:
    """CPU time used so far by every process named postgres* (the server and its backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("postgres"):
                    total += cpu_seconds(int(entry.name))
            except OSError:  # exited while we looked
                continue
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent not idle, summed over cores (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # without guest time, counted in user


def rss_mib(pid: int) -> float:
    """Resident set size of pid in MiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop_process(proc: subprocess.Popen[bytes] | None, signum: int, timeout: float = 10.0) -> None:
    """Send signum (the program's own way to stop) and wait; SIGKILL if it overstays timeout."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signum)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class Gunicorn:
    """One gunicorn master with its workers; ours uses the project's gunicorn.conf.py."""

    app: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    workers: int = 4
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    boot_to_ready: float | None = None
    _metrics_dir: tempfile.TemporaryDirectory[str] | None = None
    # Another release's own command line (its Procfile's web: line) and folder (bench/releases.py).
    argv: list[str] | None = None
    cwd: Path = PROJECT_DIR

    def command(self) -> list[str]:
        if self.argv is not None:
            return self.argv
        gunicorn = [sys.executable, "-m", "gunicorn"]
        if (
            self.app != BASELINE_APP
        ):  # the service and its variants: the project's production settings
            # --bind on the command line wins over the config file's 0.0.0.0: loopback only.
            return [
                *gunicorn,
                "--config",
                str(PROJECT_DIR / "gunicorn.conf.py"),
                "--bind",
                f"127.0.0.1:{self.port}",
                self.app,
            ]
        # The baseline: stock gunicorn, same worker count and class, nothing else, and the same
        # heartbeat folder (a server setting, not middleware: the ratio prices the middleware).
        return [
            *gunicorn,
            "--workers",
            str(self.workers),
            "--worker-class",
            "sync",
            "--worker-tmp-dir",
            SCRATCH_DIR,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "warning",
            "--no-control-socket",
            self.app,
        ]

    def start(self) -> Self:
        """Spawn the master; stdout/stderr (the JSON log lines) go to log_path or are discarded."""
        self._metrics_dir = tempfile.TemporaryDirectory(prefix="bench-metrics-", dir=SCRATCH_DIR)
        env = {
            **os.environ,
            "PORT": str(self.port),
            "BIND_HOST": "127.0.0.1",
            "WEB_CONCURRENCY": str(self.workers),
            "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir.name,
            **self.env,
        }
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        if self.log_path:
            out.close()  # type: ignore[union-attr]  # the child holds its own copy
        return self

    def wait_ready(self, timeout: float = 30.0, path: str = "/readyz") -> float:
        """Poll `path` until it answers 200; return and remember seconds from start to ready."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.app} exited with {self.proc.returncode} before it was ready"
                )
            try:
                if http_get(self.port, path, timeout=1.0)[0] == 200:
                    self.boot_to_ready = time.monotonic() - self.started_at
                    return self.boot_to_ready
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(
            f"{self.app} on port {self.port} not ready after {timeout} s"
        )

    def wait_workers(
        self, count: int | None = None, timeout: float = 15.0
    ) -> list[int]:
        """Wait until the master has `count` (default: all) workers; return their pids."""
        assert self.proc is not None
        want = self.workers if count is None else count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = children(self.proc.pid)
            if len(pids) == want:
                return pids
            time.sleep(0.05)
        raise TimeoutError(f"expected {want} workers, have {children(self.proc.pid)}")

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return children(self.proc.pid)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker, as the OOM killer would."""
        if pid not in self.worker_pids():
            raise ValueError(f"{pid} is not a worker of this master")
        os.kill(pid, signal.SIGKILL)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL the whole group only if it overstays. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in [*children(self.proc.pid), self.proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._metrics_dir is not None:
            self._metrics_dir.cleanup()
            self._metrics_dir = None
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
