"""What the API blueprints share: reading a JSON body."""

from __future__ import annotations

import json
from typing import Any

from flask import request
from werkzeug.exceptions import UnsupportedMediaType

from webapp.errors import MalformedRequest


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
