"""UserRepository: users table."""

from __future__ import annotations

from webapp.errors import EmailTaken
from webapp.models import Page, User
from webapp.repositories.base import Repository

_COLUMNS = "id, name, email, created_at"


class UserRepository(Repository):
    """Store and fetch users."""

    def add(self, name: str, email: str) -> User:
        """Insert a user; raise EmailTaken if the email (any case) is already used."""
        # ON CONFLICT DO NOTHING instead of catching UniqueViolation: a failed statement would
        # poison the request's transaction, and this keeps the 409 path a plain branch.
        row = self._one(
            f"INSERT INTO users (name, email) VALUES (%s, %s) "
            f"ON CONFLICT ((lower(email))) DO NOTHING RETURNING {_COLUMNS}",
            (name, email),
        )
        if row is None:
            raise EmailTaken("a user with this email already exists", fields={"email": "already taken"})
        return User(*row)

    def get(self, user_id: int) -> User | None:
        """Return the user with this id, or None."""
        row = self._one(f"SELECT {_COLUMNS} FROM users WHERE id = %s", (user_id,))
        return User(*row) if row else None

    def exists(self, user_id: int) -> bool:
        """True when a user with this id exists."""
        return self._one("SELECT 1 FROM users WHERE id = %s", (user_id,)) is not None

    def list_after(self, after: int, limit: int) -> Page:
        """Keyset pagination by id: stable under inserts, no OFFSET scans."""
        rows = self._all(
            f"SELECT {_COLUMNS} FROM users WHERE id > %s ORDER BY id LIMIT %s",
            (after, limit + 1),  # one extra row tells whether a next page exists
        )
        items = tuple(User(*row) for row in rows[:limit])
        return Page(items=items, next=items[-1].id if len(rows) > limit else None)
