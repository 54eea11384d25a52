"""`python -m bench.cluster` (`make cluster`): the deployed topology on loopback, for anyone to try.

    client → nginx (deploy/nginx.conf) → N gunicorn instances → PgBouncer (transaction mode) → Postgres

With DATABASE_URL set (a direct Postgres URL) its database is migrated and used; without, a
throwaway Postgres is started (bench.faultenv.OwnPostgres) and seeded with 1,000 users and 10
products. Prints the URL; Ctrl-C or SIGTERM stops everything it started. The fault suite and the
tests drive the same Cluster: restart(i), kill(i), and PgBouncer's pause()/resume().
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from psycopg.conninfo import conninfo_to_dict

from bench.nginx import Nginx
from bench.pgbouncer import PgBouncer
from bench.servers import OURS_APP, Gunicorn, free_port


class Cluster:
    """PgBouncer, `instances` gunicorn masters on fixed loopback ports, and nginx in front of them."""

    def __init__(
        self, server_database_url: str, log_dir: Path, *, instances: int = 3, workers: int = 2,
        env: dict[str, str] | None = None, pool_size: int = 10, port: int | None = None,
    ):
        # TCP or an embedded Postgres' private unix socket: in_front_of picks the user that can reach it.
        self.pgbouncer = PgBouncer.in_front_of(server_database_url, pool_size=pool_size)
        # What each instance's DATABASE_URL is: PgBouncer, never Postgres itself.
        self.database = str(conninfo_to_dict(server_database_url).get("dbname") or "postgres")
        self.database_url = self.pgbouncer.url(self.database)
        self.log_dir, self.workers, self.env = log_dir, workers, env or {}
        # Fixed per instance: nginx's upstream list names these, and a restart binds the same one.
        self.ports = [free_port() for _ in range(instances)]
        self.instances: list[Gunicorn] = []
        self.nginx = Nginx(self.ports, port=port)

    @property
    def port(self) -> int:
        """nginx's port: the one clients use."""
        return self.nginx.port

    def _instance(self, i: int) -> Gunicorn:
        env = {"DATABASE_URL": self.database_url, **self.env}
        log = self.log_dir / f"instance{i}.log"
        return Gunicorn(OURS_APP, env, port=self.ports[i], workers=self.workers, log_path=log)

    def start(self) -> Self:
        """Start everything and return once every instance is ready and nginx accepts connections."""
        self.pgbouncer.start()
        self.pgbouncer.check_reaches(self.database)  # else: instances that never get ready, the cause in its log
        self.instances = [self._instance(i).start() for i in range(len(self.ports))]
        for instance in self.instances:  # they boot in parallel; wait for each in turn
            instance.wait_ready()
            instance.wait_workers()
        self.nginx.start()
        return self

    def restart(self, i: int) -> float:
        """Stop instance i as a platform does (SIGTERM, wait), start it again; seconds until ready again."""
        self.instances[i].stop()
        replacement = self._instance(i).start()
        self.instances[i] = replacement
        return replacement.wait_ready()

    def kill(self, i: int) -> None:
        """SIGKILL instance i's master and workers at once (a lost host, the OOM killer)."""
        instance = self.instances[i]
        assert instance.proc is not None
        workers = instance.worker_pids()
        for pid in [instance.proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        instance.proc.wait(10)

    def stop(self) -> None:
        """nginx first (no new requests), then the instances (each drains), then PgBouncer."""
        self.nginx.stop()
        for instance in self.instances:
            instance.stop()
        self.pgbouncer.stop()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def a_database() -> Iterator[str]:
    """DATABASE_URL's database, migrated; or a throwaway Postgres, seeded, removed at the end."""
    from bench.faultenv import OwnPostgres
    from bench.seed import recreate_database, seed
    from webapp.postgres.migrations import migrate

    if os.environ.get("DATABASE_URL"):
        migrate(os.environ["DATABASE_URL"])
        yield os.environ["DATABASE_URL"]
        return
    postgres = OwnPostgres()
    try:
        postgres.start()
        url = recreate_database(postgres.url(), "webapp")
        seed(url, users=1000, products=10)
        yield url
    finally:
        postgres.cleanup()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    p.add_argument("--instances", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers per instance")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="nginx's port")
    args = p.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with a_database() as url, tempfile.TemporaryDirectory(prefix="webapp-cluster-") as logs:
        with Cluster(url, Path(logs), instances=args.instances, workers=args.workers, port=args.port) as cluster:
            print(
                f"http://127.0.0.1:{cluster.port}  nginx → {args.instances} instances × {args.workers} workers "
                f"(ports {', '.join(map(str, cluster.ports))}) → PgBouncer :{cluster.pgbouncer.port} "
                f"(transaction mode) → Postgres\nlogs: {logs}  (Ctrl-C stops everything)",
                flush=True,
            )
            stop.wait()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
