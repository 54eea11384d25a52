"""Flask's JSON responses encoded by orjson, through Flask's public extension point (app.json_provider_class)."""

from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import JSONProvider


class OrjsonProvider(JSONProvider):
    """Compact JSON, keys in the order the serializers wrote them; non-ASCII text as UTF-8."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        # orjson.dumps returns bytes; Flask's provider contract is a str. Datetimes are written
        # as ISO 8601 by serialize.py, never left to an encoder's default.
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)
