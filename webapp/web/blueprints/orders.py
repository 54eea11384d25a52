"""Orders API: POST /orders (with optional Idempotency-Key), GET /orders/<id>."""

from __future__ import annotations

import re

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from webapp.domain.errors import ValidationFailed
from webapp.services.orders import OrderService
from webapp.web.parsing import json_body, parse_new_order
from webapp.web.rendering import order_to_json

_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{8,255}$")


def orders_blueprint(orders: OrderService) -> Blueprint:
    """Routes for orders, bound to the given service."""
    bp = Blueprint("orders", __name__)

    @bp.post("/orders")
    def place_order() -> ResponseReturnValue:
        key = _idempotency_key()
        user_id, lines = parse_new_order(json_body())
        placed = orders.place_order(user_id, lines, idempotency_key=key)
        headers = {"Idempotent-Replayed": "true"} if placed.replayed else {}
        return order_to_json(placed.order), 201, headers

    @bp.get("/orders/<id:order_id>")
    def get_order(order_id: int) -> ResponseReturnValue:
        return order_to_json(orders.get(order_id))

    return bp


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise ValidationFailed(
            "invalid Idempotency-Key",
            fields={"Idempotency-Key": "8 to 255 characters of A-Z a-z 0-9 . _ : -"},
        )
    return key
