"""Where the test relay connects, and the database URL that goes through it (no I/O)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.tcp_relay import relayed_url, upstream_of

RELAY: Any = SimpleNamespace(host="127.0.0.1", port=40001)


@pytest.mark.parametrize(
    ("url", "upstream", "through"),
    [
        ("postgresql://postgres@127.0.0.1:5432/app", ("127.0.0.1", 5432), "postgresql://postgres@127.0.0.1:40001/app"),
        ("postgresql://u:secret@db.example:6543/app?sslmode=disable", ("db.example", 6543),
         "postgresql://u:secret@127.0.0.1:40001/app?sslmode=disable"),
        ("postgresql://localhost/app", ("localhost", 5432), "postgresql://127.0.0.1:40001/app"),
        ("postgresql://postgres:@/postgres?host=/tmp/pg&port=5433", "/tmp/pg/.s.PGSQL.5433",
         "postgresql://postgres:@127.0.0.1:40001/postgres"),
    ],
    ids=["tcp", "password-and-options", "default-port", "unix-socket"],
)
def test_the_relay_connects_where_the_url_points_and_the_relayed_url_keeps_all_but_the_address(
    url: str, upstream: object, through: str
) -> None:
    assert upstream_of(url) == upstream
    assert relayed_url(url, RELAY) == through
