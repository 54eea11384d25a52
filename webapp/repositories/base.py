"""What every repository shares: where its connection comes from, and error translation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, LiteralString

import psycopg

from webapp.db import translated_errors

ConnectionSource = Callable[[], psycopg.Connection[Any]]


class Repository:
    """Runs parameterised SQL on the current transaction's connection."""

    def __init__(self, connection: ConnectionSource):
        # A callable, not a connection: the request's transaction begins on first use.
        self._connection = connection

    def _one(self, query: LiteralString, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with translated_errors():
            return self._connection().execute(query, params).fetchone()

    def _execute(self, query: LiteralString, params: Sequence[Any] = ()) -> int:
        """Run a statement that returns no rows; return the number of rows it touched."""
        with translated_errors():
            return self._connection().execute(query, params).rowcount

    def _all(self, query: LiteralString, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with translated_errors():
            return self._connection().execute(query, params).fetchall()
