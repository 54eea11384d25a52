"""Orders API: POST /orders (with optional Idempotency-Key), GET /orders/<id>."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from webapp.blueprints.common import json_body, request_deadline
from webapp.errors import ValidationFailed
from webapp.models import OrderLine
from webapp.serialize import order_to_json
from webapp.services import OrderService
from webapp.validation import parse_new_order

_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{8,255}$")


def orders_blueprint(orders: OrderService) -> Blueprint:
    """Routes for orders, bound to the given service."""
    bp = Blueprint("orders", __name__)

    @bp.post("/orders")
    def place_order() -> ResponseReturnValue:
        key = _idempotency_key()
        user_id, lines = parse_new_order(json_body())
        receipt = orders.place_order(
            user_id,
            lines,
            idempotency_key=key,
            request_hash=_fingerprint(user_id, lines),
            deadline=request_deadline(),
        )
        headers = {"Idempotent-Replayed": "true"} if receipt.replayed else {}
        return receipt.body, receipt.status_code, headers

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


def _fingerprint(user_id: int, lines: Sequence[OrderLine]) -> str:
    """Hash of the order's meaning, not the body's bytes: key order, whitespace, 5 vs 5.0 are one request."""
    canonical = f"{user_id}|" + ",".join(f"{line.product_id}x{line.quantity}" for line in lines)
    return hashlib.sha256(canonical.encode()).hexdigest()
