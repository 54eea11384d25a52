"""Making a connection: the libpq settings of every pooled one, whether a pooler sits in between
(and so whether statements may be prepared), and the one-off connection `webapp check` makes."""

from __future__ import annotations

import re
from typing import Any

import psycopg

# psycopg's default: a statement run this many times on a connection is prepared on the server.
PREPARE_THRESHOLD = 5


def connection_kwargs(name: str, prepared_statements: bool | None) -> dict[str, Any]:
    """libpq/psycopg settings for every pooled connection: client-only, nothing the server keeps.

    prepared_statements: True or False as the operator says; None (auto) starts without and
    lets prepare_when_direct turn them on for a connection that provably reaches Postgres itself.
    """
    return {
        # We send BEGIN ourselves, with the deadline in it (begin_statement).
        "autocommit": True,
        "application_name": name,
        "connect_timeout": 5,
        # A link that drops packets (not one that answers RST) is noticed by TCP itself, for idle
        # pooled connections too: keepalive probes, and a cap on unacknowledged data (ms).
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 15_000,
        # Server-side prepared statements live in the server session: through PgBouncer < 1.21 in
        # transaction mode the next statement may land on another server connection ("prepared
        # statement _pg3_0 does not exist", or worse, another statement's result). None = never.
        "prepare_threshold": PREPARE_THRESHOLD if prepared_statements else None,
    }


def is_pooled(conn: psycopg.Connection[Any]) -> bool:
    """True when conn reaches Postgres through a pooler (PgBouncer, PgCat, Supavisor, RDS Proxy...).

    At connect, libpq is told a backend process id (BackendKeyData, for cancel requests). Postgres
    sends its own; a pooler cannot, since the client's statements run on whichever server
    connection is free, so it sends one it made up (PgBouncer: a random cancel key). Asking the
    server which process runs this statement tells the two apart: direct, the ids are the same.
    One round trip per new connection, in the pool's background thread, never in a request.
    """
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return row is None or row[0] != conn.info.backend_pid


def prepare_when_direct(conn: psycopg.Connection[Any]) -> bool:
    """Turn on server-side prepared statements for conn when nothing pools it; return whether it did.

    Through a transaction-mode pooler a prepared statement lives on one server connection and the
    next statement may run on another, so the safe side is the default: only a connection proven
    direct prepares. What it saves straight to Postgres: bench/README.md.
    """
    if is_pooled(conn):
        return False
    conn.prepare_threshold = PREPARE_THRESHOLD
    return True


def server_version(url: str, timeout: int = 5) -> str:
    """Connect once and return the server's version (`webapp check`); raises psycopg.Error."""
    with psycopg.connect(url, connect_timeout=timeout) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


# libpq reports connection failures as text only (no SQLSTATE before the server answers).
_FAILURES = (
    ("connection refused", r"connection refused"),
    ("timeout", r"timeout expired|timed out"),
    ("DNS: the host name does not resolve", r"resolve host|translate host name|name or service not known|"
                                            r"temporary failure in name resolution|nodename nor servname"),
    ("authentication failed", r"authentication failed|no pg_hba\.conf entry|role \".*\" does not exist|"
                              r"password is required|no password supplied"),
    ("the database does not exist", r"database \".*\" does not exist"),
)


def connection_failure(exc: BaseException) -> str:
    """Why a connection attempt failed, in a few words: refused, timeout, DNS, authentication, ..."""
    text = str(exc)
    for reason, pattern in _FAILURES:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return reason
    return type(exc).__name__
