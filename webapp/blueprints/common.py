"""What the API blueprints share: reading a JSON body."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from webapp.errors import MalformedRequest


def json_body() -> Any:
    """Decode the request body as JSON or raise MalformedRequest (400)."""
    try:
        return json.loads(request.get_data(cache=True))
    # JSONDecodeError is a ValueError; a body nested thousands deep ([[[[...) exhausts the decoder's recursion limit.
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc.__class__.__name__}") from exc
