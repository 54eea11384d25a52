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
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise MalformedRequest(f"request body is not valid JSON: {exc.__class__.__name__}") from exc


def request_deadline() -> Deadline | None:
    """The deadline http.py set for this request."""
    return g.get("deadline")
