"""The bare baseline: Flask + psycopg_pool and nothing else, doing the same SQL work as the service.

No request ids, no logging, no metrics, no deadline, no validation beyond what keeps it honest.
It is what "the fastest you could write this in Flask" looks like, so the ratio ours/baseline
is the price of the production middleware. Served by `gunicorn 'bench.baseline_app:create_app()'`.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request
from psycopg_pool import ConnectionPool


def create_app() -> Flask:
    """One pool per worker (gunicorn calls this after fork), same sizes as the service's defaults."""
    pool = ConnectionPool(
        os.environ["DATABASE_URL"], min_size=2, max_size=10, timeout=2.0, open=True
    )
    app = Flask("baseline")

    @app.get("/readyz")
    def readyz() -> Any:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        return {"status": "ok"}

    @app.get("/users/<int:user_id>")
    def get_user(user_id: int) -> Any:
        with (
            pool.connection() as conn
        ):  # BEGIN .. COMMIT, like the service's per-request transaction
            row = conn.execute(
                "SELECT id, name, email, created_at FROM users WHERE id = %s",
                (user_id,),
            ).fetchone()
        if row is None:
            return {"error": "not found"}, 404
        return {
            "id": row[0],
            "name": row[1],
            "email": row[2],
            "created_at": row[3].isoformat(),
        }

    @app.post("/orders")
    def place_order() -> Any:
        data = request.get_json()
        user_id = data["user_id"]
        lines = {item["product_id"]: item["quantity"] for item in data["items"]}
        with pool.connection() as conn:
            if (
                conn.execute("SELECT 1 FROM users WHERE id = %s", (user_id,)).fetchone()
                is None
            ):
                return {"error": "unknown user"}, 422
            products = conn.execute(
                "SELECT id, price_cents, stock, name FROM products WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                (sorted(lines),),
            ).fetchall()
            if len(products) != len(lines):
                return {"error": "unknown product"}, 422
            if any(stock < lines[pid] for pid, _price, stock, _name in products):
                return {
                    "error": "insufficient stock"
                }, 409  # nothing written yet; the pool rolls back
            conn.execute(
                "UPDATE products SET stock = stock - v.quantity "
                "FROM unnest(%s::bigint[], %s::int[]) AS v(id, quantity) WHERE products.id = v.id",
                (list(lines), list(lines.values())),
            )
            total = sum(lines[pid] * price for pid, price, _stock, _name in products)
            order_id, created_at = conn.execute(
                "INSERT INTO orders (user_id, total_cents) VALUES (%s, %s) RETURNING id, created_at",
                (user_id, total),
            ).fetchone()  # type: ignore[misc]
            conn.execute(
                "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents, product_name) "
                "SELECT %s, * FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::text[])",
                (
                    order_id,
                    [p[0] for p in products],
                    [lines[p[0]] for p in products],
                    [p[1] for p in products],
                    [p[3] for p in products],
                ),
            )
        items = [
            {"product_id": p[0], "product_name": p[3], "quantity": lines[p[0]], "unit_price_cents": p[1]}
            for p in products
        ]
        body = {
            "id": order_id,
            "user_id": user_id,
            "total_cents": total,
            "created_at": created_at.isoformat(),
        }
        return {**body, "items": items}, 201

    return app
