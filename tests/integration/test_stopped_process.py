"""tests/stopped_process.stopped: a process a test stops is resumed at the block's end, after at_most seconds
while the block still runs, and even when the test process dies inside the block."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_until
from tests.stopped_process import state, stopped


@pytest.fixture
def sleeper() -> Iterator[int]:
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def test_the_process_runs_again_when_the_block_ends(sleeper: int):
    with stopped(sleeper, at_most=30):
        assert state(sleeper) == "T"
    assert state(sleeper) != "T"


def test_the_process_runs_again_when_the_block_raises(sleeper: int):
    with pytest.raises(RuntimeError), stopped(sleeper, at_most=30):
        raise RuntimeError("the test failed while the process was stopped")
    assert state(sleeper) != "T"


def test_a_block_that_outlives_at_most_does_not_keep_the_process_stopped(sleeper: int):
    with stopped(sleeper, at_most=0.3):
        assert state(sleeper) == "T"
        assert wait_until(lambda: state(sleeper) != "T", timeout=3)


def test_the_process_runs_again_even_when_the_test_process_dies_inside_the_block(sleeper: int):
    # As pytest-timeout's thread method ends a hung run: os._exit, so no finally and no atexit runs.
    dies = f"import os; from tests.stopped_process import stopped\nwith stopped({sleeper}, at_most=0.5): os._exit(1)"
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", dies], cwd=Path(__file__).parents[2], check=False, timeout=10)
    assert state(sleeper) == "T"  # nothing in the dead process resumed it...
    assert wait_until(lambda: state(sleeper) != "T", timeout=3)  # ...its detached resumer did
    assert time.monotonic() - started < 0.5 + 2
