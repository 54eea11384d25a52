"""Domain objects → the JSON the API shows (the blueprints render with these), encoded by orjson."""

from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import JSONProvider

from webapp.domain.models import Order, Page, Product, User


class OrjsonProvider(JSONProvider):
    """Flask's JSON responses through orjson, Flask's public slot (`app.json`): compact, keys in order."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        # orjson.dumps returns bytes; Flask's provider contract is a str. Datetimes are written
        # as ISO 8601 by the functions below, never left to an encoder's default.
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def user_to_json(user: User) -> dict[str, Any]:
    return user.as_json()  # the one shape, shared with the cache


def product_to_json(product: Product) -> dict[str, Any]:
    return {
        "id": product.id,
        "sku": product.sku,
        "name": product.name,
        "price_cents": product.price_cents,
        "stock": product.stock,
        "created_at": product.created_at.isoformat(),
    }


def order_to_json(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "user_id": order.user_id,
        "total_cents": order.total_cents,
        "created_at": order.created_at.isoformat(),
        "items": [
            {"product_id": i.product_id, "product_name": i.product_name, "quantity": i.quantity,
             "unit_price_cents": i.unit_price_cents}
            for i in order.items
        ],
    }


def page_to_json(page: Page) -> dict[str, Any]:
    return {"items": [user_to_json(u) for u in page.items], "next": page.next}
