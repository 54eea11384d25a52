"""What every repository shares: running SQL on the current unit of work's transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, LiteralString

from webapp.transaction import Transaction


class Repository:
    """Runs parameterised SQL on the transaction the service opened (`with uow.begin()`)."""

    def __init__(self, transaction: Callable[[], Transaction]):
        # A callable, not a transaction: repositories are built once, transactions per request.
        self._transaction = transaction

    def _one(self, query: LiteralString, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of the result, or None."""
        return self._transaction().execute(query, params).fetchone()

    def _execute(self, query: LiteralString, params: Sequence[Any] = ()) -> int:
        """Run a statement that returns no rows; return the number of rows it touched."""
        return self._transaction().execute(query, params).rowcount

    def _all(self, query: LiteralString, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of the result."""
        return self._transaction().execute(query, params).fetchall()
