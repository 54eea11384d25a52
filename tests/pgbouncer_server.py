"""A real PgBouncer (Debian's 1.18) in transaction mode in front of the test database, for the session.

    with pgbouncer_for(database_url) as bouncer:
        url = bouncer.url(database_name(database_url))

Where the binary (or nginx, for the tests through the proxy) is missing, the tests that need it
skip, visibly, unless REQUIRE_PGBOUNCER=1 (.ci/run sets it, after installing both): then they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from bench.pgbouncer import PgBouncer, pgbouncer_binary

# Three server connections for every client of the run: requests really share them, so any
# session state one request leaves behind is seen by the next one (what production does to us).
POOL_SIZE = 3


def database_name(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


@contextmanager
def pgbouncer_for(database_url: str) -> Iterator[PgBouncer]:
    """PgBouncer pointing at the server of database_url (any database name), stopped at the end."""
    require("pgbouncer", pgbouncer_binary())
    # An embedded Postgres listens on a private unix-socket folder: in_front_of runs PgBouncer as its owner.
    with PgBouncer.in_front_of(database_url, pool_size=POOL_SIZE) as bouncer:
        bouncer.check_reaches(database_name(database_url))
        yield bouncer


def require(package: str, binary: str | None) -> None:
    """Skip visibly when a deploy tool is missing; fail instead under REQUIRE_PGBOUNCER=1 (CI installs both)."""
    if binary is not None:
        return
    if os.environ.get("REQUIRE_PGBOUNCER") == "1":
        pytest.fail(f"REQUIRE_PGBOUNCER=1 but {package} is not installed (.ci/run installs pgbouncer and nginx)")
    pytest.skip(f"{package} is not installed (apt-get install {package}); REQUIRE_PGBOUNCER=1 makes this fail")


def server_settings(url: str, name: str, tries: int) -> list[str]:
    """`SHOW name` sent `tries` times by a fresh client of the pool: each may land on another server connection."""
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        return [str(conn.execute(f"SHOW {name}").fetchone()[0]) for _ in range(tries)]  # type: ignore[index]
