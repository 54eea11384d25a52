"""UserService: create, fetch (through the cache) and list users."""

from __future__ import annotations

from collections.abc import Callable

from webapp.errors import NotFound
from webapp.models import Order, Page, User
from webapp.services.ports import OrderStore, UnitOfWork, UserCache, UserStore


class UserService:
    """Users and the orders they placed."""

    def __init__(self, users: UserStore, orders: OrderStore, cache: UserCache, uow: UnitOfWork | None = None):
        self._users = users
        self._orders = orders
        self._cache = cache
        self._uow = uow

    def register(self, name: str, email: str) -> User:
        """Create a user; EmailTaken when the email is in use."""
        user = self._users.add(name, email)
        # A write evicts the user's cache entry once it is committed. For a new id that entry
        # can only be a leftover (ids reused after a restore or a reset), but every user write
        # goes through the same rule, so the next one cannot forget it.
        self._after_commit(lambda: self._cache.invalidate(user.id))
        return user

    def get(self, user_id: int) -> User:
        """Return the user, from the cache when it has it; NotFound otherwise."""
        user = self._cache.get(user_id)
        if user is None:
            user = self._users.get(user_id)
            if user is None:
                raise NotFound(f"user {user_id} not found")
            self._cache.put(user)
        return user

    def page(self, after: int, limit: int) -> Page:
        """One page of users with ids greater than `after`."""
        return self._users.list_after(after, limit)

    def orders_of(self, user_id: int, after: int, limit: int) -> tuple[list[Order], int | None]:
        """One page of the user's orders and the cursor of the next; NotFound for an unknown user."""
        if not self._users.exists(user_id):
            raise NotFound(f"user {user_id} not found")
        orders = self._orders.list_for_user(user_id, after, limit + 1)  # +1 tells if more exist
        return orders[:limit], (orders[limit - 1].id if len(orders) > limit else None)

    def _after_commit(self, callback: Callable[[], None]) -> None:
        if self._uow is None:  # no transaction to wait for (in-memory fakes)
            callback()
        else:
            self._uow.after_commit(callback)
