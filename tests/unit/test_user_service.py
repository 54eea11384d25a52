"""UserService rules on fakes: read-through cache, eviction only after COMMIT, not-found, pagination cursors."""

from __future__ import annotations

import pytest

from tests.unit.fakes import FakeCache, FakeOrders, FakeState, FakeUnitOfWork, FakeUsers
from webapp.cache.users import NoCache
from webapp.domain.errors import NotFound
from webapp.domain.models import OrderItem
from webapp.services.users import UserService


def build(with_cache: bool = True):
    state = FakeState()
    users, orders = FakeUsers(state), FakeOrders(state)
    cache = FakeCache(state) if with_cache else NoCache()
    uow = FakeUnitOfWork(state, users=users, orders=orders)
    return UserService(uow, cache), state, users, orders, cache


def test_registering_evicts_the_cached_user_only_after_the_commit():
    service, state, _, _, _ = build()
    user = service.register("Ann", "ann@example.org")
    # Evicting before COMMIT would let a concurrent reader cache the old row again in between.
    assert state.events == ["begin", "commit", f"cache invalidate {user.id}"]


def test_a_cached_user_is_served_without_a_transaction():
    service, state, users, _, _ = build()
    user = service.register("Ann", "ann@example.org")
    assert service.get(user.id) == user  # miss: a read-only transaction, then cached
    state.events.clear()
    assert service.get(user.id) == user  # hit
    assert users.gets == 1
    assert state.events == []


def test_reads_run_in_read_only_transactions():
    service, state, _, _, _ = build()
    user = service.register("Ann", "ann@example.org")
    state.events.clear()
    service.get(user.id)
    service.page(after=0, limit=10)
    service.orders_of(user.id, after=0, limit=10)
    assert [e for e in state.events if e.startswith("begin")] == ["begin read-only"] * 3
    assert "commit" not in state.events


def test_without_a_cache_every_read_goes_to_the_repository():
    service, _, users, _, _ = build(with_cache=False)
    user = service.register("Ann", "ann@example.org")
    service.get(user.id)
    service.get(user.id)
    assert users.gets == 2


def test_unknown_user_is_not_found_and_nothing_is_cached():
    service, _, _, _, cache = build()
    with pytest.raises(NotFound):
        service.get(7)
    assert isinstance(cache, FakeCache) and cache.store == {}


def test_orders_of_an_unknown_user_is_not_found():
    service, _, _, _, _ = build()
    with pytest.raises(NotFound):
        service.orders_of(3, after=0, limit=10)


def test_orders_of_a_user_are_paged_with_a_next_cursor():
    service, _, _, orders, _ = build()
    user = service.register("Ann", "ann@example.org")
    for _ in range(3):
        orders.add(user.id, [OrderItem(1, 1, 100, "Apple")])
    page, cursor = service.orders_of(user.id, after=0, limit=2)
    assert [o.id for o in page] == [1, 2] and cursor == 2
    page, cursor = service.orders_of(user.id, after=2, limit=2)
    assert [o.id for o in page] == [3] and cursor is None
