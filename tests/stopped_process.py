"""Stop a process (SIGSTOP) for a block, and resume it whatever happens to the block or to this process.

A stopped Postgres backend holds its locks and its database: left stopped, it blocks every later
DROP DATABASE on the server. So the resume does not depend on this process living on: besides the
`finally`, a detached `sleep; kill -CONT` of its own resumes the process after at_most seconds even
when pytest-timeout ends the run with os._exit (no finally, no atexit) or the run is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.polling import wait_until


@contextlib.contextmanager
def stopped(pid: int, at_most: float) -> Iterator[None]:
    """SIGSTOP pid for the block; SIGCONT at its end, or after at_most seconds, whichever comes first.

    Raises PermissionError (nothing left behind) when this user may not signal pid.
    """
    resumer = subprocess.Popen(
        ["sh", "-c", f"sleep {at_most:.3f}; kill -CONT {int(pid)}"],
        start_new_session=True,  # its own process group: survives the run, ended below by its group id
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        os.kill(pid, signal.SIGSTOP)
        # The signal is delivered asynchronously: the block begins once the process is stopped.
        wait_until(lambda: state(pid) in ("T", "t", ""), timeout=2, interval=0.001)
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(resumer.pid, signal.SIGKILL)
        resumer.wait()


def state(pid: int) -> str:
    """The process's state letter from /proc/<pid>/stat: T when stopped, "" when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
