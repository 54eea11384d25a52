"""A database of the bench's own: created, migrated with webapp.postgres.migrations, and filled in bulk."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from webapp.postgres.migrations import migrate

# int4 column; large enough that no benchmark run ever sells out.
LARGE_STOCK = 2_000_000_000


def database_url(server_url: str, name: str) -> str:
    """server_url with its database name replaced by name."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def recreate_database(server_url: str, name: str) -> str:
    """Drop and create database `name` on the server, migrate it, and return its URL."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(server_url, name)
    migrate(url)
    return url


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )


def seed(url: str, *, users: int, products: int, stock: int = LARGE_STOCK) -> None:
    """Insert users 1..users and products 1..products (ids are identities on a fresh database)."""
    with psycopg.connect(url, autocommit=True) as conn:
        # One set-based INSERT each: 100,000 rows take about a second, not a minute of round trips.
        conn.execute(
            "INSERT INTO users (name, email) SELECT 'User ' || g, 'user' || g || '@example.com' "
            "FROM generate_series(1, %s) AS g",
            (users,),
        )
        conn.execute(
            "INSERT INTO products (sku, name, price_cents, stock) "
            "SELECT 'SKU-' || g, 'Product ' || g, 100 + g, %s FROM generate_series(1, %s) AS g",
            (stock, products),
        )
        conn.execute(
            "VACUUM ANALYZE"
        )  # plans and visibility map as a long-running database would have


def prime_user_cache(redis_url: str, url: str, ttl: int = 3600) -> int:
    """Write every user into Redis with the service's own RedisUserCache (pipelined); return how many.

    The cache-on benchmark measures a warm cache: random ids over 100,000 users would otherwise
    mostly miss, and a miss costs a Redis GET and SET on top of the database read.
    """
    import redis

    from webapp.cache.users import RedisUserCache
    from webapp.domain.models import User
    from webapp.resilience import CircuitBreaker

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    pipe = client.pipeline(transaction=False)
    cache = RedisUserCache(
        pipe, CircuitBreaker("prime", threshold=1, reset_after=60), ttl
    )
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, name, email, created_at FROM users").fetchall()
    for row in rows:
        cache.put(User(*row))
    pipe.execute()
    return len(rows)


def reset_orders(url: str) -> None:
    """Forget every order (orders pile up across benchmark rounds); users and products stay."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE order_items, orders, idempotency_keys")
