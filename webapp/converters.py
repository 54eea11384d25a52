"""URL converters."""

from __future__ import annotations

from werkzeug.routing import IntegerConverter

from webapp.validation import MAX_ID


class IdConverter(IntegerConverter):
    """A positive bigint id: /users/0 or /users/99999999999999999999 is a 404, never a database error."""

    def __init__(self, map, *args, **kwargs):
        super().__init__(map, min=1, max=MAX_ID)
