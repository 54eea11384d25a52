"""Helpers shared by the API blueprints: reading a JSON body, the request's deadline."""

from __future__ import annotations

import json
from typing import Any

from flask import g, request

from webapp.errors import MalformedRequest
from webapp.resilience import Deadline


def json_body() -> Any:
    """Decode the request body as JSON or raise MalformedRequest (400)."""
    try:
        return json.loads(request.get_data(cache=True))
    # JSONDecodeError is a ValueError; a body nested thousands deep ([[[[...) exhausts the decoder's recursion limit.
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc.__class__.__name__}") from exc


def request_deadline() -> Deadline | None:
    """The deadline http.py set for this request."""
    return g.get("deadline")
