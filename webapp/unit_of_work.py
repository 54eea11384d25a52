"""The unit of work the services use: `with uow.begin() as tx: ...; tx.commit()` (cosmicpython's shape)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from webapp.db import Database
from webapp.resilience import Deadline
from webapp.transaction import Transaction


class PostgresUnitOfWork:
    """Begins a Database.transaction bounded by the current request's deadline; repositories find it here.

    The open transaction is kept in a ContextVar of this object's own, so each request (and each
    thread of a test) sees only its own, and two apps in one process share nothing.
    """

    def __init__(self, database: Database, deadline: Callable[[], Deadline]):
        self._database = database
        self._deadline = deadline
        self._current: ContextVar[Transaction | None] = ContextVar(f"transaction-{id(self)}", default=None)

    @contextmanager
    def begin(self, *, read_only: bool = False) -> Iterator[Transaction]:
        """One transaction: commit() keeps its work; leaving the block any other way rolls it back."""
        if self._current.get() is not None:
            raise RuntimeError("transactions do not nest: finish the open one first")
        with self._database.transaction(self._deadline(), read_only=read_only) as tx:
            token = self._current.set(tx)
            try:
                yield tx
            finally:
                self._current.reset(token)

    def current(self) -> Transaction:
        """The transaction this request has open; repositories run every statement on it."""
        tx = self._current.get()
        if tx is None:
            raise RuntimeError("a repository was used outside `with uow.begin()`")
        return tx
