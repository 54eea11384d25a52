"""Users API: POST /users, GET /users/<id>, GET /users, GET /users/<id>/orders."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from webapp.services.users import UserService
from webapp.web.parsing import json_body, parse_new_user, parse_page
from webapp.web.rendering import order_to_json, page_to_json, user_to_json


def users_blueprint(users: UserService) -> Blueprint:
    """Routes for users, bound to the given service."""
    bp = Blueprint("users", __name__)

    @bp.post("/users")
    def create_user() -> ResponseReturnValue:
        name, email = parse_new_user(json_body())
        return user_to_json(users.register(name, email)), 201

    @bp.get("/users/<id:user_id>")
    def get_user(user_id: int) -> ResponseReturnValue:
        return user_to_json(users.get(user_id))

    @bp.get("/users")
    def list_users() -> ResponseReturnValue:
        after, limit = parse_page(request.args)
        return page_to_json(users.page(after, limit))

    @bp.get("/users/<id:user_id>/orders")
    def list_user_orders(user_id: int) -> ResponseReturnValue:
        after, limit = parse_page(request.args)
        orders, next_cursor = users.orders_of(user_id, after, limit)
        return jsonify(items=[order_to_json(o) for o in orders], next=next_cursor)

    return bp
