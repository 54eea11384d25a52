"""The PgBouncer the tests, the fault suite and `make cluster` start (bench/pgbouncer.py): it reaches the
server whatever the server's socket, and says so at once, with its log, when it cannot."""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import psycopg
import pytest

from bench.pgbouncer import RUN_AS, PgBouncer, pgbouncer_binary, run_as_for
from bench.servers import free_port
from tests.pgbouncer_server import database_name, require


@pytest.mark.skipif(os.geteuid() != 0, reason="PgBouncer switches user only when started as root (chown needs it)")
def test_pgbouncer_runs_as_the_owner_of_a_unix_socket_folder_and_as_postgres_for_tcp(tmp_path: Path) -> None:
    private = tmp_path / "socket"
    private.mkdir(mode=0o700)
    nobody = pwd.getpwnam("nobody")
    os.chown(private, nobody.pw_uid, nobody.pw_gid)
    assert run_as_for(str(private)) == "nobody"  # an embedded Postgres' data folder: only its owner gets in
    assert run_as_for(str(tmp_path)) == RUN_AS  # root's folder: root cannot be PgBouncer's user
    assert run_as_for("127.0.0.1") == RUN_AS


def test_pgbouncer_in_front_of_the_test_server_reaches_it_over_tcp_or_an_embedded_servers_private_socket(
    database_url: str,
) -> None:
    require("pgbouncer", pgbouncer_binary())
    with PgBouncer.in_front_of(database_url, pool_size=1) as bouncer:
        bouncer.check_reaches(database_name(database_url))
        with psycopg.connect(bouncer.url(database_name(database_url)), autocommit=True) as conn:
            assert conn.execute("SELECT current_database()", prepare=False).fetchone() == (
                database_name(database_url),
            )


def test_a_pgbouncer_that_cannot_reach_its_server_fails_at_once_quoting_its_log() -> None:
    require("pgbouncer", pgbouncer_binary())
    with PgBouncer("127.0.0.1", free_port(), pool_size=1) as bouncer:  # nothing listens there
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="cannot reach the server") as failure:
            bouncer.check_reaches("postgres")
        assert time.monotonic() - started < 10  # not the 30 s of instances that never get ready
        # PgBouncer's own log says why ("connect failed"; an unreadable socket folder: "sbuf_connect failed:
        # Permission denied"), where the apps behind it would only say they never got ready.
        assert "connect failed" in str(failure.value)
