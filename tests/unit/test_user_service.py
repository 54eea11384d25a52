"""UserService rules on fakes: read-through cache, not-found, pagination cursors."""

from __future__ import annotations

import pytest

from tests.unit.fakes import FakeCache, FakeOrders, FakeState, FakeUsers
from webapp.errors import EmailTaken, NotFound
from webapp.models import OrderItem
from webapp.services import UserService
from webapp.services.ports import NoCache


def build(cache=None):
    state = FakeState()
    users = FakeUsers(state)
    orders = FakeOrders(state)
    return UserService(users, orders, cache or FakeCache()), users, orders


def test_a_cached_user_is_served_without_asking_the_repository():
    service, users, _ = build()
    user = service.register("Ann", "ann@example.org")
    assert service.get(user.id) == user  # miss: repository, then cached
    assert service.get(user.id) == user  # hit
    assert users.gets == 1


def test_without_a_cache_every_read_goes_to_the_repository():
    service, users, _ = build(NoCache())
    user = service.register("Ann", "ann@example.org")
    service.get(user.id)
    service.get(user.id)
    assert users.gets == 2


def test_unknown_user_is_not_found_and_nothing_is_cached():
    cache = FakeCache()
    service, _, _ = build(cache)
    with pytest.raises(NotFound):
        service.get(7)
    assert cache.store == {}


def test_duplicate_email_in_any_case_is_refused():
    service, _, _ = build()
    service.register("Ann", "ann@example.org")
    with pytest.raises(EmailTaken):
        service.register("Other Ann", "ANN@example.org")


def test_listing_pages_with_a_cursor_until_the_end():
    service, _, _ = build()
    for i in range(5):
        service.register(f"U{i}", f"u{i}@example.org")
    first = service.page(after=0, limit=2)
    second = service.page(after=first.next or 0, limit=2)
    third = service.page(after=second.next or 0, limit=2)
    assert [u.id for u in first.items + second.items + third.items] == [1, 2, 3, 4, 5]
    assert third.next is None


def test_orders_of_an_unknown_user_is_not_found():
    service, _, _ = build()
    with pytest.raises(NotFound):
        service.orders_of(3, after=0, limit=10)


def test_orders_of_a_user_are_paged_with_a_next_cursor():
    service, _, orders = build()
    user = service.register("Ann", "ann@example.org")
    for _ in range(3):
        orders.add(user.id, [OrderItem(1, 1, 100)])
    page, cursor = service.orders_of(user.id, after=0, limit=2)
    assert [o.id for o in page] == [1, 2] and cursor == 2
    page, cursor = service.orders_of(user.id, after=2, limit=2)
    assert [o.id for o in page] == [3] and cursor is None
