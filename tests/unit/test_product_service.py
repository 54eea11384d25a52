"""ProductService rules on fakes: a read is a read-only transaction, a write commits, a missing product is NotFound."""

from __future__ import annotations

import pytest

from tests.unit.fakes import FakeState, FakeUnitOfWork
from webapp.domain.errors import NotFound
from webapp.services.catalogue import ProductService


def build() -> tuple[ProductService, FakeState]:
    state = FakeState()
    return ProductService(FakeUnitOfWork(state)), state


def test_adding_a_product_commits_its_transaction():
    service, state = build()
    product = service.add("APPLE", "Apple", 150, 5)
    assert state.products == {product.id: product}
    assert state.events == ["begin", "commit"]


def test_reads_run_in_read_only_transactions():
    # BEGIN READ ONLY: Postgres itself refuses a write that slips into a read.
    service, state = build()
    product = service.add("APPLE", "Apple", 150, 5)
    state.events.clear()
    assert service.get(product.id) == product
    with pytest.raises(NotFound):
        service.get(99)
    assert state.events == ["begin read-only", "rollback"] * 2
