"""What every repository shares: where its connection comes from, and error translation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, LiteralString

import psycopg

from webapp.db import domain_error

ConnectionSource = Callable[[], psycopg.Connection[Any]]


class Repository:
    """Runs parameterised SQL on the current transaction's connection."""

    def __init__(self, connection: ConnectionSource):
        # A callable, not a connection: the request's transaction begins on first use.
        self._connection = connection

    def _run(self, query: LiteralString, params: Sequence[Any]) -> psycopg.Cursor[Any]:
        # A plain try/except, not a contextmanager: this runs for every query of every request.
        try:
            return self._connection().execute(query, params)
        except psycopg.Error as exc:
            translated = domain_error(exc)
            if translated is None:
                raise
            raise translated from exc

    def _one(self, query: LiteralString, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of the result, or None."""
        return self._run(query, params).fetchone()

    def _execute(self, query: LiteralString, params: Sequence[Any] = ()) -> int:
        """Run a statement that returns no rows; return the number of rows it touched."""
        return self._run(query, params).rowcount

    def _all(self, query: LiteralString, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of the result."""
        return self._run(query, params).fetchall()
