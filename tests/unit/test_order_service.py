"""OrderService rules, on in-memory fakes: atomic stock, clear refusals, whole-transaction retry, idempotency."""

from __future__ import annotations

import pytest

from tests.unit.fakes import FakeKeys, FakeOrders, FakeProducts, FakeState, FakeUnitOfWork, FakeUsers
from webapp.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InsufficientStock,
    NotFound,
    TransientDatabaseError,
    ValidationFailed,
)
from webapp.models import OrderLine
from webapp.services import OrderService


def build(fail_times: int = 0, busy: set[str] | None = None):
    state = FakeState()
    users, products = FakeUsers(state), FakeProducts(state)
    users.add("Ann", "ann@example.org")
    products.add("APPLE", "Apple", 150, 5)
    products.add("PEAR", "Pear", 200, 1)
    uow = FakeUnitOfWork(state)  # snapshot taken after the arrangement above
    products.fail_times = fail_times
    service = OrderService(uow, users, products, FakeOrders(state), FakeKeys(state, busy), attempts=3)
    return service, state, uow, products


def test_placing_an_order_decrements_stock_and_totals_the_items():
    service, state, _, _ = build()
    receipt = service.place_order(1, [OrderLine(1, 2), OrderLine(2, 1)])
    assert receipt.status_code == 201 and not receipt.replayed
    assert receipt.body["total_cents"] == 2 * 150 + 200
    assert state.products[1].stock == 3
    assert state.products[2].stock == 0


def test_products_are_locked_in_ascending_id_order_whatever_the_request_order():
    service, _, _, products = build()
    service.place_order(1, [OrderLine(2, 1), OrderLine(1, 1)])
    assert products.lock_calls == [[1, 2]]


def test_insufficient_stock_names_the_product_and_changes_nothing():
    service, state, _, _ = build()
    with pytest.raises(InsufficientStock) as caught:
        service.place_order(1, [OrderLine(1, 1), OrderLine(2, 2)])
    assert caught.value.product_id == 2
    assert caught.value.fields == {"items.1.quantity": "only 1 in stock"}
    assert state.orders == {}
    assert state.products[1].stock == 5


def test_unknown_user_is_a_validation_error_on_user_id():
    service, _, _, _ = build()
    with pytest.raises(ValidationFailed) as caught:
        service.place_order(42, [OrderLine(1, 1)])
    assert caught.value.fields == {"user_id": "no user with id 42"}


def test_every_unknown_product_is_named():
    service, _, _, _ = build()
    with pytest.raises(ValidationFailed) as caught:
        service.place_order(1, [OrderLine(7, 1), OrderLine(1, 1), OrderLine(9, 1)])
    assert set(caught.value.fields or {}) == {"items.0.product_id", "items.2.product_id"}


def test_a_serialization_failure_retries_the_whole_transaction_after_rolling_back():
    service, state, uow, products = build(fail_times=2)
    receipt = service.place_order(1, [OrderLine(1, 1)])
    assert uow.restarts == 2
    assert len(products.lock_calls) == 3
    assert receipt.body["id"] == 1 and len(state.orders) == 1
    assert state.products[1].stock == 4


def test_retries_give_up_with_the_transient_error_after_the_last_attempt():
    service, state, uow, _ = build(fail_times=5)
    with pytest.raises(TransientDatabaseError):
        service.place_order(1, [OrderLine(1, 1)])
    assert uow.restarts == 2  # three attempts, two rollbacks in between
    assert state.orders == {}


def test_client_errors_are_never_retried():
    service, _, uow, _ = build()
    with pytest.raises(InsufficientStock):
        service.place_order(1, [OrderLine(2, 5)])
    assert uow.restarts == 0


def test_same_idempotency_key_and_body_replays_the_first_response():
    service, state, _, _ = build()
    first = service.place_order(1, [OrderLine(1, 1)], idempotency_key="key-00001", request_hash="h1")
    again = service.place_order(1, [OrderLine(1, 1)], idempotency_key="key-00001", request_hash="h1")
    assert again.replayed and again.body == first.body and again.status_code == 201
    assert len(state.orders) == 1 and state.products[1].stock == 4


def test_same_idempotency_key_with_another_body_is_refused():
    service, _, _, _ = build()
    service.place_order(1, [OrderLine(1, 1)], idempotency_key="key-00001", request_hash="h1")
    with pytest.raises(IdempotencyKeyReused):
        service.place_order(1, [OrderLine(1, 2)], idempotency_key="key-00001", request_hash="h2")


def test_a_key_held_by_a_request_in_flight_is_a_conflict():
    service, state, _, _ = build(busy={"key-00001"})
    with pytest.raises(IdempotencyKeyInFlight):
        service.place_order(1, [OrderLine(1, 1)], idempotency_key="key-00001", request_hash="h1")
    assert state.orders == {}


def test_getting_a_missing_order_is_not_found():
    service, _, _, _ = build()
    with pytest.raises(NotFound):
        service.get(99)
