"""`make run` on a first start: an empty folder, no DATABASE_URL, and what a newcomer sees before it is ready."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.gunicorn_server import free_port, request

# The developer's settings stay out: the child sees only what a fresh shell in an empty folder would.
_KEEP = ("PATH", "HOME", "LANG", "TMPDIR")


@pytest.mark.slow
def test_make_runs_first_start_says_where_postgres_lives_in_one_line_and_stops_cleanly_on_ctrl_c(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k in _KEEP}
    # As `make run` starts it; no XDG_RUNTIME_DIR, as in a container or an ssh session without a login.
    env |= {"PORT": str(port), "LOG_FORMAT": "console", "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "out.txt"
    folder = tmp_path / "project"
    folder.mkdir()
    with out.open("w") as sink:
        # Its own session: Ctrl-C at a terminal signals the whole foreground group, and so does this test.
        process = subprocess.Popen([sys.executable, "-m", "webapp", "dev"], env=env, cwd=folder, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 25
        while True:
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, f"not ready:\n{out.read_text()[-3000:]}"
            try:
                status, _headers, body = request(port, "GET", "/readyz", timeout=2)
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.2)
        assert json.loads(body) == {"status": "ok", "checks": {"database": "ok", "cache": "disabled"}}
        lines = out.read_text().splitlines()
        before_gunicorn = lines[: next(i for i, line in enumerate(lines) if "Starting gunicorn" in line)]
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = out.read_text()
    [summary] = [line for line in before_gunicorn if "embedded Postgres" in line]
    data = folder / ".pgdata"
    assert str(data) in summary and f"psql -h {data}" in summary and "Ctrl-C" in summary
    assert [line for line in before_gunicorn if "webapp.postgres.migrations" not in line and "webapp.main" not
            in line] == [summary], "only the summary and the migrations come before gunicorn"
    assert "Success. You can now start" not in text and "pg_ctl" not in text and "port=5432" not in text
    assert "RuntimeDirWarning" not in text and "Traceback" not in text
    assert f"Listening at: http://127.0.0.1:{port}" in text and "workers=2" in text
