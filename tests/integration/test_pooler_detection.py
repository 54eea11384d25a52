"""DB_PREPARED_STATEMENTS=auto: a connection finds out whether a pooler sits between it and Postgres.

Server-side prepared statements are safe straight to Postgres and unsafe through a
transaction-mode pooler; these tests run the detection against both, the pooler being a real
PgBouncer 1.18 in transaction mode.
"""

from __future__ import annotations

import psycopg

from webapp.postgres.connection import is_pooled
from webapp.postgres.database import Database
from webapp.postgres.unit_of_work import Transaction
from webapp.resilience import Deadline


def test_a_connection_straight_to_postgres_is_not_pooled(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert not is_pooled(conn)


def test_a_connection_through_pgbouncer_is_pooled(pgbouncer_url: str) -> None:
    with psycopg.connect(pgbouncer_url, autocommit=True, prepare_threshold=None) as conn:
        assert is_pooled(conn)


def test_through_pgbouncer_the_default_pool_never_prepares_and_every_statement_answers(pgbouncer_url: str) -> None:
    with Database(pgbouncer_url, min_size=2, max_size=2, timeout=2) as database:
        database.pool.wait(timeout=5)
        assert database.direct is False
        # Two pooled connections over three shared server connections, 20 statements each: with
        # prepares on, psycopg's 6th run would name a statement another server connection never saw.
        for _ in range(20):
            with Transaction(database, Deadline(5), read_only=True) as tx:
                assert tx.execute("SELECT %s::int + 1", (1,)).fetchone() == (2,)
        for _ in range(2):
            with database.pool.connection(timeout=2) as conn:
                assert conn.prepare_threshold is None
