"""Request input into plain values: ids in paths, JSON bodies, query strings. Every problem in a body
is collected into one 422; an id that is not one is a 404 before any view runs."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from flask import request
from werkzeug.exceptions import UnsupportedMediaType
from werkzeug.routing import IntegerConverter

from webapp.domain.errors import MalformedRequest, ValidationFailed
from webapp.domain.models import OrderLine

MAX_ID = 2**63 - 1  # Postgres bigint: a larger id would be a 500 from the database, not a 422
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class IdConverter(IntegerConverter):
    """`<id:...>` in a route: a positive bigint in ASCII digits, else the route does not match (404).

    Trap: werkzeug's IntegerConverter matches `\\d+`, which in Python also matches the other
    Unicode digits, and int() reads them: `/users/%D9%A1` (Arabic-Indic 1) was user 1.
    Postgres' bigint bounds it: /users/99999999999999999999 is a 404, not a database error.
    """

    regex = r"[0-9]{1,19}"

    def __init__(self, map: Any, *args: Any, **kwargs: Any):
        super().__init__(map, min=1, max=MAX_ID)


def json_body() -> Any:
    """The request body decoded as JSON; 415 for another content type, 413 over MAX_BODY_BYTES, else 400."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    try:
        # Flask's MAX_CONTENT_LENGTH (create_app): a declared length over it is a 413 before any byte is read.
        return json.loads(request.get_data(cache=True))
    # JSONDecodeError is a ValueError; a body nested thousands deep ([[[[...) exhausts the decoder's recursion limit.
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc.__class__.__name__}") from exc


class Fields:
    """Reads fields from a JSON object, remembering every problem instead of stopping at the first."""

    def __init__(self, data: Any, allowed: set[str]):
        self.problems: dict[str, str] = {}
        if not isinstance(data, dict):
            raise ValidationFailed("request body must be a JSON object", fields={"body": "must be an object"})
        self.data = data
        for unknown in sorted(set(data) - allowed):
            self.problems[unknown] = "unknown field"

    def integer(self, name: str, low: int, high: int, *, source: Mapping[str, Any] | None = None,
                label: str | None = None) -> int:
        value = (self.data if source is None else source).get(name)
        label = label or name
        # JSON has one number type: 5.0 is the integer 5 (as JSON Schema says), 5.5 is not.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        # bool is an int in Python; true is not a valid quantity.
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems[label] = "required integer" if value is None else "must be an integer"
            return 0
        if not low <= value <= high:
            self.problems[label] = f"must be between {low} and {high}"
        return value

    def string(self, name: str, max_len: int, *, pattern: re.Pattern[str] | None = None) -> str:
        value = self.data.get(name)
        if not isinstance(value, str):
            self.problems[name] = "required string" if value is None else "must be a string"
            return ""
        value = value.strip()
        if not 1 <= len(value) <= max_len:
            self.problems[name] = f"must be 1 to {max_len} characters"
        elif "\x00" in value:
            self.problems[name] = "must not contain NUL characters"  # Postgres text rejects NUL
        elif not _utf8_encodable(value):
            self.problems[name] = "must be valid Unicode text"  # a lone surrogate ("\ud800") has no UTF-8 form
        elif pattern is not None and not pattern.match(value):
            self.problems[name] = "has an invalid format"
        return value

    def check(self) -> None:
        """Raise one ValidationFailed naming every problem found."""
        if self.problems:
            raise ValidationFailed("request validation failed", fields=self.problems)


def _utf8_encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_new_user(data: Any) -> tuple[str, str]:
    f = Fields(data, {"name", "email"})
    name, email = f.string("name", 200), f.string("email", 254, pattern=_EMAIL)
    f.check()
    return name, email


def parse_new_product(data: Any) -> tuple[str, str, int, int]:
    f = Fields(data, {"sku", "name", "price_cents", "stock"})
    sku, name = f.string("sku", 64, pattern=_SKU), f.string("name", 200)
    price, stock = f.integer("price_cents", 0, 10**12), f.integer("stock", 0, 2**31 - 1)
    f.check()
    return sku, name, price, stock


def parse_new_order(data: Any) -> tuple[int, list[OrderLine]]:
    f = Fields(data, {"user_id", "items"})
    user_id = f.integer("user_id", 1, MAX_ID)
    items = f.data.get("items")
    lines: list[OrderLine] = []
    if not isinstance(items, list) or not 1 <= len(items) <= 50:
        f.problems["items"] = "must be a list of 1 to 50 items"
    else:
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                f.problems[f"items.{i}"] = "must be an object"
                continue
            for unknown in sorted(set(item) - {"product_id", "quantity"}):
                f.problems[f"items.{i}.{unknown}"] = "unknown field"
            product_id = f.integer("product_id", 1, MAX_ID, source=item, label=f"items.{i}.product_id")
            quantity = f.integer("quantity", 1, 10_000, source=item, label=f"items.{i}.quantity")
            if any(line.product_id == product_id for line in lines):
                f.problems[f"items.{i}.product_id"] = "appears twice; combine the quantities"
            lines.append(OrderLine(product_id, quantity))
    f.check()
    return user_id, lines


def parse_page(args: Mapping[str, str], *, default_limit: int = 20) -> tuple[int, int]:
    """Parse ?limit=&after= for keyset pagination: limit 1..100, after a non-negative id."""
    problems: dict[str, str] = {}
    limit, after = default_limit, 0
    if "limit" in args:
        limit = _query_int(args["limit"], 1, 100, "limit", problems)
    if "after" in args:
        after = _query_int(args["after"], 0, MAX_ID, "after", problems)
    if problems:
        raise ValidationFailed("invalid query parameters", fields=problems)
    return after, limit


def _query_int(raw: str, low: int, high: int, name: str, problems: dict[str, str]) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        problems[name] = f"must be an integer between {low} and {high}"
        return low
    return int(raw)
