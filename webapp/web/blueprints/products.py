"""Products API: POST /products, GET /products/<id>."""

from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from webapp.services.catalogue import ProductService
from webapp.web.parsing import json_body, parse_new_product
from webapp.web.rendering import product_to_json


def products_blueprint(products: ProductService) -> Blueprint:
    """Routes for the catalogue, bound to the given service."""
    bp = Blueprint("products", __name__)

    @bp.post("/products")
    def create_product() -> ResponseReturnValue:
        sku, name, price_cents, stock = parse_new_product(json_body())
        return product_to_json(products.add(sku, name, price_cents, stock)), 201

    @bp.get("/products/<id:product_id>")
    def get_product(product_id: int) -> ResponseReturnValue:
        return product_to_json(products.get(product_id))

    return bp
