"""webapp.gunicorn.settings in real processes: what gunicorn reads, what it refuses, what a bare gunicorn lacks.

Each settings load runs in a child process: importing the module sets up a gunicorn master
(environment, logging, prometheus_client's storage), which must not leak into the test process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.gunicorn_server import free_port, request
from webapp.gunicorn.server_settings import usable_cpus

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
SETTINGS = "python:webapp.gunicorn.settings"
# What the developer's shell or .env could set, and the marker a settings module leaves behind.
_SETTINGS_ENV = (
    "DATABASE_URL", "PORT", "BIND_HOST", "WEB_CONCURRENCY", "GUNICORN_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT",
    "SHUTDOWN_DRAIN_SECONDS", "PRESTOP_SECONDS", "STOP_WINDOW_SECONDS", "GUNICORN_BACKLOG", "GUNICORN_MAX_REQUESTS",
    "GUNICORN_CMD_ARGS", "LOG_LEVEL", "LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR", "WEBAPP_GUNICORN_SETTINGS",
    "SERVER_SOFTWARE",
)


def child_env(**env: str) -> dict[str, str]:
    """This process's environment without any setting the test did not choose (and no .env unless asked)."""
    base = {k: v for k, v in os.environ.items() if k not in _SETTINGS_ENV and k != "FLASK_SKIP_DOTENV"}
    return {**base, "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1", **env}


_DUMP = """
import json, runpy, sys, importlib
source = sys.argv[1]
names = runpy.run_path(source) if source.endswith(".py") else vars(importlib.import_module(source))
print(json.dumps({k: v for k, v in names.items() if isinstance(v, (int, float, str, bool, list)) or v is None}
                 | {"hooks": sorted(k for k, v in names.items() if callable(v) and k.islower() and "_" in k)}))
"""


def load_settings(tmp_path: Path, source: str = "webapp.gunicorn.settings", **env: str) -> dict[str, Any]:
    """The module-level settings gunicorn would read from source (a module name or a file)."""
    # Set, so the module's setdefault leaves nothing behind in /dev/shm.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    done = subprocess.run([sys.executable, "-c", _DUMP, source], env=child_env(**env), cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("source", ["webapp.gunicorn.settings", str(PROJECT_DIR / "gunicorn.conf.py")])
def test_the_settings_read_the_environment_then_dotenv(tmp_path: Path, source: str):
    (tmp_path / ".env").write_text("PORT=1\nGUNICORN_BACKLOG=99\n")
    conf = load_settings(tmp_path, source, PORT="5123", WEB_CONCURRENCY="3", BIND_HOST="127.0.0.1",
                         FLASK_SKIP_DOTENV="0")
    assert conf["bind"] == ["127.0.0.1:5123"]  # the environment wins over .env
    assert conf["backlog"] == 99  # what only .env sets, as for every other entry point
    assert conf["workers"] == 3
    assert conf["preload_app"] is False
    assert conf["control_socket_disable"] is True
    assert conf["worker_class"] == "webapp.gunicorn.worker.DrainingSyncWorker"
    assert conf["timeout"] <= conf["graceful_timeout"]
    assert {"on_starting", "post_fork", "worker_abort", "worker_exit", "child_exit", "on_exit"} <= set(conf["hooks"])


def mount_type(path: str) -> str:
    """The filesystem type of the mount holding path, from /proc/mounts (the longest matching mount point)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _device, point, fstype, *_ = line.split()
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fstype
    return kind


def test_the_settings_default_to_all_interfaces_on_port_8000_workers_from_the_cpus_and_tmpfs(tmp_path: Path):
    conf = load_settings(tmp_path)
    assert conf["bind"] == ["0.0.0.0:8000"]  # all interfaces, as a platform's router needs
    assert conf["workers"] == 2 * usable_cpus() + 1
    if Path("/dev/shm").is_dir():
        # The heartbeat and the metrics files are written per request; on a disk they cost journal work.
        assert mount_type(conf["worker_tmp_dir"]) == "tmpfs"
        assert Path(conf["_own_metrics_dir"]).parent == Path(conf["worker_tmp_dir"])


def run_to_exit(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, list[str], str]:
    """Run gunicorn to its exit; return (status, stdout lines, stderr)."""
    done = subprocess.run([sys.executable, "-m", "gunicorn", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout.splitlines(), done.stderr


@pytest.mark.parametrize("env, variables", [
    ({"GUNICORN_TIMEOUT": "abc", "LOG_LEVEL": "loud"}, {"GUNICORN_TIMEOUT", "LOG_LEVEL"}),
    ({"PRESTOP_SECONDS": "10"}, {"GUNICORN_GRACEFUL_TIMEOUT"}),  # 10 + 1 + 0.5 + 20 > 29: the stop overruns
])
def test_an_invalid_server_setting_is_one_json_line_naming_the_variable(tmp_path: Path, env: dict[str, str],
                                                                          variables: set[str]):
    status, lines, stderr = run_to_exit(
        ["-c", SETTINGS, "webapp:create_app()"], child_env(DATABASE_URL="postgresql://app@db/x", **env), tmp_path,
    )
    assert status == 1
    assert stderr == ""  # no traceback: platforms merge stderr into the same log stream
    [line] = [json.loads(text) for text in lines]
    assert line["level"] == "ERROR" and line["message"] == "invalid configuration; not starting"
    assert set(line["problems"]) == variables
    assert "abc" not in json.dumps(line["problems"]) and "loud" not in json.dumps(line["problems"])


def test_an_invalid_app_configuration_stops_the_master_before_any_worker_with_json_lines_only(tmp_path: Path):
    status, lines, stderr = run_to_exit(
        ["-c", SETTINGS, "-b", f"127.0.0.1:{free_port()}", "webapp:create_app()"],
        child_env(DATABASE_URL="postgresql://app:hunter2%zz@db/x", REQUEST_TIMEOUT="-3"), tmp_path,
    )
    assert status == 1 and stderr == ""
    records = [json.loads(text) for text in lines]  # every line is JSON
    [refusal] = [r for r in records if r["message"] == "invalid configuration; not starting"]
    assert set(refusal["problems"]) == {"DATABASE_URL", "REQUEST_TIMEOUT"}
    assert "hunter2" not in "\n".join(lines)
    assert not [r for r in records if "Booting worker" in r["message"]]


@contextmanager
def gunicorn(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A gunicorn master in its own process group, stdout to a file; killed with its workers at the end."""
    out = cwd / "stdout.log"
    with out.open("wb") as stdout:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", *args], env=env, cwd=cwd,
                                   stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process, out
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_for_line(out: Path, predicate: Any, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(predicate(line) for line in out.read_text().splitlines()):
        assert process.poll() is None, f"gunicorn exited {process.returncode}:\n{out.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no such line within {timeout} s:\n{out.read_text()[-3000:]}"
        time.sleep(0.05)


def test_a_bare_gunicorn_logs_one_warning_naming_what_is_missing_and_how_to_get_it(server_url: str, tmp_path: Path):
    # What the design card names, from a folder without gunicorn.conf.py: stock gunicorn, no settings.
    port = free_port()
    env = child_env(DATABASE_URL=server_url)
    with gunicorn(["-w", "1", "-b", f"127.0.0.1:{port}", "webapp:create_app()"], env, tmp_path) as (process, out):
        wait_for_line(out, lambda line: '"app created"' in line, process)
        assert request(port, "GET", "/livez")[0] == 200  # it serves: only the warning says what it lacks
        warnings = [json.loads(line) for line in out.read_text().splitlines() if '"webapp.serving"' in line]
    [warning] = warnings
    assert warning["level"] == "WARNING"
    assert SETTINGS in warning["message"] and "webapp serve" in warning["message"]
    assert any("draining" in item for item in warning["missing"])


def test_a_bare_gunicorn_without_database_url_stops_with_one_json_line_naming_it_and_no_traceback(tmp_path: Path):
    # A folder with only a .env that lacks DATABASE_URL (a bare gunicorn reads no .env anyway).
    (tmp_path / ".env").write_text("LOG_LEVEL=info\n")
    env = {k: v for k, v in child_env().items() if k != "FLASK_SKIP_DOTENV"}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{free_port()}", "webapp:create_app()"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3  # gunicorn's "Worker failed to boot": the master stops instead of respawning
    [line] = done.stdout.splitlines()
    logged = json.loads(line)
    assert logged["level"] == "ERROR" and "DATABASE_URL" in logged["message"]
    assert set(logged["problems"]) == {"DATABASE_URL"}
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="this machine has no /dev/shm")
def test_workers_share_the_default_metrics_folder_though_the_package_imported_prometheus_first(
    server_url: str, tmp_path: Path,
):
    # prometheus_client chooses multi-process storage at its first import, only if
    # PROMETHEUS_MULTIPROC_DIR is set by then: the settings module sets it before importing it.
    port = free_port()
    env = child_env(DATABASE_URL=server_url, SHUTDOWN_DRAIN_SECONDS="0")
    args = ["-c", SETTINGS, "-w", "2", "-b", f"127.0.0.1:{port}", "webapp:create_app()"]
    with gunicorn(args, env, tmp_path) as (process, out):
        wait_for_line(out, lambda line: '"gunicorn ready"' in line, process)
        metrics_dir = Path(f"/dev/shm/webapp-metrics-{process.pid}")
        deadline = time.monotonic() + 15
        while not list(metrics_dir.glob("counter_*.db")):
            with suppress(OSError):
                request(port, "GET", "/livez", timeout=2)
            assert time.monotonic() < deadline, f"no worker wrote to {metrics_dir}:\n{out.read_text()[-3000:]}"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not metrics_dir.exists()  # the folder was this master's own: removed at exit
        lines = [json.loads(line) for line in out.read_text().splitlines()]  # every line is JSON
    assert not [line for line in lines if line["logger"] == "webapp.serving"]  # with our settings: no warning
