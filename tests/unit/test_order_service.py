"""OrderService rules, on in-memory fakes: one transaction per attempt, clear refusals, whole-transaction
retry, idempotency per user."""

from __future__ import annotations

import pytest

from tests.unit.fakes import FakeKeys, FakeOrders, FakeProducts, FakeState, FakeUnitOfWork, FakeUsers
from webapp.domain.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InsufficientStock,
    NotFound,
    TransientDatabaseError,
    ValidationFailed,
)
from webapp.domain.models import OrderLine
from webapp.services.orders import OrderService, fingerprint


def build(fail_times: int = 0, busy: set[tuple[int, str]] | None = None, fail_on_add: bool = False):
    state = FakeState()
    users, products = FakeUsers(state), FakeProducts(state)
    users.add("Ann", "ann@example.org")
    users.add("Bob", "bob@example.org")
    products.add("APPLE", "Apple", 150, 5)
    products.add("PEAR", "Pear", 200, 1)
    products.fail_times = fail_times
    orders = FakeOrders(state, fail_on_add=fail_on_add)
    uow = FakeUnitOfWork(state, users=users, products=products, orders=orders, idempotency_keys=FakeKeys(state, busy))
    service = OrderService(uow, attempts=3)
    return service, state, uow, products


def test_placing_an_order_decrements_stock_totals_the_items_and_commits_once():
    service, state, uow, _ = build()
    placed = service.place_order(1, [OrderLine(1, 2), OrderLine(2, 1)])
    assert not placed.replayed
    assert placed.order.total_cents == 2 * 150 + 200
    assert state.products[1].stock == 3
    assert state.products[2].stock == 0
    assert state.events == ["begin", "commit"]


def test_a_step_failing_after_the_stock_decrement_commits_nothing_and_leaves_the_stock():
    service, state, uow, _ = build(fail_on_add=True)
    with pytest.raises(RuntimeError, match="injected"):
        service.place_order(1, [OrderLine(1, 2)])
    assert uow.commits == 0 and uow.rollbacks == 1
    assert state.products[1].stock == 5
    assert state.orders == {}


def test_each_line_keeps_the_name_and_price_its_product_had_when_ordered():
    service, state, _, _ = build()
    placed = service.place_order(1, [OrderLine(2, 1), OrderLine(1, 1)])
    assert [(i.product_id, i.product_name, i.unit_price_cents) for i in placed.order.items] == [
        (1, "Apple", 150), (2, "Pear", 200)]


def test_products_are_locked_in_ascending_id_order_whatever_the_request_order():
    service, _, _, products = build()
    service.place_order(1, [OrderLine(2, 1), OrderLine(1, 1)])
    assert products.lock_calls == [[1, 2]]


def test_insufficient_stock_names_the_product_and_commits_nothing():
    service, state, uow, _ = build()
    with pytest.raises(InsufficientStock) as caught:
        service.place_order(1, [OrderLine(1, 1), OrderLine(2, 2)])
    assert caught.value.fields == {"items.1.quantity": "only 1 in stock"}
    assert uow.commits == 0
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


def test_a_serialization_failure_retries_the_whole_transaction_in_a_fresh_one():
    service, state, uow, products = build(fail_times=2)
    placed = service.place_order(1, [OrderLine(1, 1)])
    assert state.events == ["begin", "rollback", "begin", "rollback", "begin", "commit"]
    assert len(products.lock_calls) == 3
    assert placed.order.id == 1 and len(state.orders) == 1
    assert state.products[1].stock == 4


def test_retries_give_up_with_the_transient_error_after_the_last_attempt():
    service, state, uow, _ = build(fail_times=5)
    with pytest.raises(TransientDatabaseError):
        service.place_order(1, [OrderLine(1, 1)])
    assert uow.rollbacks == 3 and uow.commits == 0
    assert state.orders == {}


def test_client_errors_are_never_retried():
    service, _, uow, _ = build()
    with pytest.raises(InsufficientStock):
        service.place_order(1, [OrderLine(2, 5)])
    assert uow.rollbacks == 1


def test_same_idempotency_key_and_order_replays_the_first_order():
    service, state, _, _ = build()
    first = service.place_order(1, [OrderLine(1, 1), OrderLine(2, 1)], idempotency_key="key-00001")
    again = service.place_order(1, [OrderLine(2, 1), OrderLine(1, 1)], idempotency_key="key-00001")  # lines reordered
    assert again.replayed and again.order == first.order
    assert len(state.orders) == 1 and state.products[1].stock == 4


def test_same_idempotency_key_with_another_order_is_refused():
    service, _, _, _ = build()
    service.place_order(1, [OrderLine(1, 1)], idempotency_key="key-00001")
    with pytest.raises(IdempotencyKeyReused):
        service.place_order(1, [OrderLine(1, 2)], idempotency_key="key-00001")


def test_same_idempotency_key_with_another_product_at_the_same_quantity_is_refused():
    service, state, _, _ = build()
    service.place_order(1, [OrderLine(1, 1)], idempotency_key="key-00001")
    with pytest.raises(IdempotencyKeyReused):
        service.place_order(1, [OrderLine(2, 1)], idempotency_key="key-00001")
    assert len(state.orders) == 1 and state.products[2].stock == 1


def test_one_users_idempotency_key_never_blocks_another_user():
    service, state, _, _ = build()
    service.place_order(1, [OrderLine(1, 1)], idempotency_key="key-00001")
    placed = service.place_order(2, [OrderLine(1, 2)], idempotency_key="key-00001")
    assert not placed.replayed and placed.order.user_id == 2
    assert len(state.orders) == 2


def test_a_key_held_by_a_request_in_flight_is_a_conflict():
    service, state, _, _ = build(busy={(1, "key-00001")})
    with pytest.raises(IdempotencyKeyInFlight):
        service.place_order(1, [OrderLine(1, 1)], idempotency_key="key-00001")
    assert state.orders == {}


def test_the_fingerprint_is_the_orders_meaning_not_its_line_order():
    assert fingerprint(1, [OrderLine(1, 1), OrderLine(2, 3)]) == fingerprint(1, [OrderLine(2, 3), OrderLine(1, 1)])
    assert fingerprint(1, [OrderLine(1, 1)]) != fingerprint(2, [OrderLine(1, 1)])
    assert fingerprint(1, [OrderLine(1, 1)]) != fingerprint(1, [OrderLine(1, 2)])
    assert fingerprint(1, [OrderLine(1, 1)]) != fingerprint(1, [OrderLine(2, 1)])


def test_getting_a_missing_order_is_not_found_in_a_read_only_transaction():
    service, state, _, _ = build()
    with pytest.raises(NotFound):
        service.get(99)
    assert state.events == ["begin read-only", "rollback"]
