"""UserService: create, fetch (through the cache) and list users."""

from __future__ import annotations

from webapp.domain.errors import NotFound
from webapp.domain.models import Order, Page, User
from webapp.services.ports import UnitOfWork, UserCache


class UserService:
    """Users and the orders they placed."""

    def __init__(self, uow: UnitOfWork, cache: UserCache):
        self._uow = uow
        self._cache = cache

    def register(self, name: str, email: str) -> User:
        """Create a user; EmailTaken when the email is in use."""
        with self._uow.begin() as tx:
            user = tx.users.add(name, email)
            tx.commit()
        # After COMMIT, never before: evicting first lets a concurrent reader re-cache the old row
        # in between. For a new id the entry can only be a leftover (ids reused after a restore),
        # but every user write follows the same rule, so the next one cannot forget it.
        self._cache.invalidate(user.id)
        return user

    def get(self, user_id: int) -> User:
        """Return the user, from the cache when it has it; NotFound otherwise."""
        user = self._cache.get(user_id)
        if user is not None:
            return user  # no transaction begun, no connection taken
        with self._uow.begin(read_only=True) as tx:
            user = tx.users.get(user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        self._cache.put(user)
        return user

    def page(self, after: int, limit: int) -> Page:
        """One page of users with ids greater than `after`."""
        with self._uow.begin(read_only=True) as tx:
            return tx.users.list_after(after, limit)

    def orders_of(self, user_id: int, after: int, limit: int) -> tuple[list[Order], int | None]:
        """One page of the user's orders and the cursor of the next; NotFound for an unknown user."""
        with self._uow.begin(read_only=True) as tx:
            if not tx.users.exists(user_id):
                raise NotFound(f"user {user_id} not found")
            orders = tx.orders.list_for_user(user_id, after, limit + 1)  # +1 tells if more exist
        return orders[:limit], (orders[limit - 1].id if len(orders) > limit else None)
