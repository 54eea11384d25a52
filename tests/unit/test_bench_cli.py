"""Every runnable module in bench/ answers -h with its usage, not a traceback."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.servers import PROJECT_DIR

BENCH = PROJECT_DIR / "bench"
RUNNABLE = sorted(
    path.stem for path in BENCH.glob("*.py")
    if re.search(r'^if __name__ == "__main__":', path.read_text(), re.MULTILINE)
)


def test_the_runnable_bench_modules_are_found() -> None:
    # The ones the docs and the Makefile run: a change in how __main__ is written must not empty the list below.
    assert {"cluster", "fault", "metrics_churn", "nginx", "run", "slow_clients"} <= set(RUNNABLE)


@pytest.mark.parametrize("module", RUNNABLE)
def test_python_m_bench_module_dash_h_prints_usage_and_exits_0(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"bench.{module}", "-h"], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: python -m bench.{module} ")
    assert "Traceback" not in done.stdout + done.stderr
