"""Domain objects → the JSON the API shows; the blueprints render with these."""

from __future__ import annotations

from typing import Any

from webapp.models import Order, Page, Product, User


def user_to_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "email": user.email, "created_at": user.created_at.isoformat()}


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
            {"product_id": i.product_id, "quantity": i.quantity, "unit_price_cents": i.unit_price_cents}
            for i in order.items
        ],
    }


def page_to_json(page: Page) -> dict[str, Any]:
    return {"items": [user_to_json(u) for u in page.items], "next": page.next}
