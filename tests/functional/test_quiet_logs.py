"""A healthy request logs no WARNING: a warning is a line an operator must act on, so the happy path has none.

A warning on every request (say, the pool rolling back each connection a transaction left open)
is noise that hides the real ones, and the sign of a bug whose data is still right.
"""

from __future__ import annotations

import logging

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse


def created(response: TestResponse) -> int:
    """The id of what a POST created."""
    assert response.status_code == 201, response.get_json()
    return int(response.get_json()["id"])


@pytest.fixture
def shop(client: FlaskClient) -> dict[str, int]:
    user = created(client.post("/users", json={"name": "Ann", "email": "ann@example.org"}))
    product = created(client.post("/products", json={"sku": "P1", "name": "P1", "price_cents": 250, "stock": 10}))
    order = created(client.post("/orders", json={"user_id": user, "items": [{"product_id": product, "quantity": 1}]}))
    return {"user": user, "product": product, "order": order}


def warnings(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name} {r.levelname}: {r.getMessage()}" for r in records if r.levelno >= logging.WARNING]


HEALTHY_GETS = [
    "/users/{user}",
    "/users?limit=10",
    "/users/{user}/orders",
    "/products/{product}",
    "/orders/{order}",
    "/readyz",
]


@pytest.mark.parametrize("path", HEALTHY_GETS)
def test_a_healthy_get_logs_no_warning(client: FlaskClient, shop: dict[str, int], path: str, caplog):
    client.get(path.format(**shop))  # the first one warms up whatever a first request builds
    with caplog.at_level(logging.WARNING):  # on the root logger: every logger that propagates
        for _ in range(3):
            response = client.get(path.format(**shop))
            assert response.status_code == 200, response.get_json()
    assert warnings(caplog.records) == []


def test_a_healthy_order_logs_no_warning(client: FlaskClient, shop: dict[str, int], caplog):
    body = {"user_id": shop["user"], "items": [{"product_id": shop["product"], "quantity": 1}]}
    with caplog.at_level(logging.WARNING):
        placed = client.post("/orders", json=body, headers={"Idempotency-Key": "quiet-order-0001"})
        replayed = client.post("/orders", json=body, headers={"Idempotency-Key": "quiet-order-0001"})
    assert (placed.status_code, replayed.status_code) == (201, 201)
    assert warnings(caplog.records) == []
