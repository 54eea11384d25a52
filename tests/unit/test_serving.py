"""gunicorn's settings as pure functions: the CPU quota from a fake cgroup tree, the stop window, bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from webapp.gunicorn.server_settings import cgroup_cpu_quota, load_server_settings, stop_window_problems, usable_cpus
from webapp.settings import ConfigError


def fake_root(tmp_path: Path, proc_self_cgroup: str, files: dict[str, str]) -> Path:
    """A filesystem root holding proc/self/cgroup and the given files under sys/fs/cgroup."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(proc_self_cgroup)
    for relative, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_cgroup_v2_quota_in_a_container_is_read_from_cpu_max(tmp_path: Path):
    # docker --cpus=1.5: the container sees its own cgroup as "/".
    root = fake_root(tmp_path, "0::/\n", {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_quota(root) == 1.5
    assert usable_cpus(root, affinity=32) == 2  # a 1.5-CPU container on a 32-core node
    assert usable_cpus(root, affinity=1) == 1  # the affinity still caps it


def test_the_smallest_quota_on_the_way_up_the_cgroup_tree_wins(tmp_path: Path):
    # Kubernetes: limits.cpu on the pod's cgroup; the container's own cgroup says "max".
    root = fake_root(tmp_path, "0::/kubepods/pod1/ctr\n", {
        "kubepods/cpu.max": "max 100000\n",
        "kubepods/pod1/cpu.max": "50000 100000\n",
        "kubepods/pod1/ctr/cpu.max": "max 100000\n",
    })
    assert cgroup_cpu_quota(root) == 0.5
    assert usable_cpus(root, affinity=32) == 1


def test_no_quota_means_the_affinity_decides(tmp_path: Path):
    root = fake_root(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root) is None
    assert usable_cpus(root, affinity=6) == 6


def test_a_cgroup_v1_quota_is_read_from_cfs_quota_and_period(tmp_path: Path):
    # The host's path in /proc/self/cgroup does not exist under the container's mount: the mount is the cgroup.
    root = fake_root(tmp_path, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/docker/abc\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_quota(root) == 2.0


def test_a_cgroup_v1_quota_of_minus_one_is_no_quota(tmp_path: Path):
    root = fake_root(tmp_path, "4:cpu,cpuacct:/\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_quota(root) is None


def test_no_cgroup_information_at_all_means_no_quota(tmp_path: Path):
    assert cgroup_cpu_quota(tmp_path) is None  # no proc/self/cgroup (not Linux, or a sandbox)


def test_server_settings_default_to_two_workers_per_cpu_plus_one():
    settings = load_server_settings({}, cpus=2)
    assert (settings.bind_host, settings.port, settings.workers) == ("0.0.0.0", 8000, 5)
    assert settings.timeout <= settings.graceful_timeout
    assert load_server_settings({"WEB_CONCURRENCY": "3"}, cpus=2).workers == 3


def test_every_bad_server_variable_is_named_and_no_value_is_echoed():
    with pytest.raises(ConfigError) as caught:
        load_server_settings({"GUNICORN_TIMEOUT": "abc", "WEB_CONCURRENCY": "0", "LOG_FORMAT": "xml"}, cpus=2)
    assert set(caught.value.problems) == {"GUNICORN_TIMEOUT", "WEB_CONCURRENCY", "LOG_FORMAT"}
    assert "abc" not in str(caught.value) and "xml" not in str(caught.value)


def test_a_prestop_delay_counts_against_the_stop_window():
    with pytest.raises(ConfigError) as caught:
        load_server_settings({"PRESTOP_SECONDS": "10"}, cpus=1)  # 10 + 1 + 0.5 + 20 > 30 - 1
    assert set(caught.value.problems) == {"GUNICORN_GRACEFUL_TIMEOUT"}
    assert "PRESTOP_SECONDS" in str(caught.value)
    # A platform that waits longer (terminationGracePeriodSeconds: 60) says so.
    assert load_server_settings({"PRESTOP_SECONDS": "10", "STOP_WINDOW_SECONDS": "60"}, cpus=1).prestop_seconds == 10


@pytest.mark.parametrize("timeout, graceful, drain, prestop, problem", [
    (15, 20, 1, 0, None),
    (15, 20, 1, 7, None),  # 7 + 1 + 0.5 + 20 = 28.5: just fits
    (30, 28, 0, 0, "GUNICORN_TIMEOUT"),
    (15, 25, 5, 0, "GUNICORN_GRACEFUL_TIMEOUT"),
    (15, 20, 1, 8, "GUNICORN_GRACEFUL_TIMEOUT"),
    (15, 20, -1, 0, "SHUTDOWN_DRAIN_SECONDS"),
    (0, 20, 1, 0, "GUNICORN_TIMEOUT"),
])
def test_the_stop_window_is_checked_at_startup(timeout: int, graceful: int, drain: float, prestop: float,
                                               problem: str | None):
    problems = stop_window_problems(timeout=timeout, graceful_timeout=graceful, drain_seconds=drain,
                                    prestop_seconds=prestop)
    assert list(problems) == ([problem] if problem else [])


def test_importing_the_settings_sets_the_metrics_folder_before_prometheus_client_is_first_imported(tmp_path):
    # prometheus_client picks single- or multi-process storage once, at its first import: were it
    # imported before PROMETHEUS_MULTIPROC_DIR is set, /metrics would silently count one worker only.
    probe = (
        "import os, sys\n"
        "import webapp\n"
        "assert 'prometheus_client' not in sys.modules, 'importing the package imported prometheus_client'\n"
        "import webapp.gunicorn.settings\n"
        "import prometheus_client.values as v\n"
        "print(os.environ['PROMETHEUS_MULTIPROC_DIR'], getattr(v.ValueClass, '_multiprocess', False))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")}
    env.update(FLASK_SKIP_DOTENV="1", DATABASE_URL="postgresql://app@db/x", TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    folder, multiprocess = done.stdout.split()[-2:]
    assert folder.startswith(("/dev/shm/webapp-metrics-", str(tmp_path))) and multiprocess == "True"


@pytest.mark.parametrize(("env", "expected"), [
    ({}, 5.0),
    ({"GUNICORN_TIMEOUT": "4", "GUNICORN_GRACEFUL_TIMEOUT": "20"}, 2.0),  # the default stays below a short timeout
    ({"CLIENT_READ_TIMEOUT": "2.5"}, 2.5),
])
def test_workers_get_a_read_timeout_below_the_worker_timeout(env: dict[str, str], expected: float):
    settings = load_server_settings(env, cpus=1)
    assert settings.client_read_timeout == expected < settings.timeout


@pytest.mark.parametrize("value", ["0", "15", "-1"])
def test_a_read_timeout_the_worker_timeout_would_cut_is_refused(value: str):
    with pytest.raises(ConfigError) as refused:
        load_server_settings({"CLIENT_READ_TIMEOUT": value}, cpus=1)
    assert set(refused.value.problems) == {"CLIENT_READ_TIMEOUT"}
