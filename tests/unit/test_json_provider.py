"""CompactJSONProvider: byte-for-byte Flask's compact JSON, from an encoder built once."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import uuid

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from webapp.http import CompactJSONProvider, SyncFlask


@dataclasses.dataclass
class Point:
    x: int
    y: int


SAMPLE = {
    "id": 7,
    "name": "Zoë \u2603 \"quoted\" \\ back",
    "created_at": datetime.datetime(2026, 11, 27, 5, 39, 28, 123456, tzinfo=datetime.UTC),
    "day": datetime.date(2026, 11, 27),
    "price": decimal.Decimal("12.50"),
    "uuid": uuid.UUID(int=1),
    "point": Point(1, 2),
    "items": [1, 2.5, None, True, {"nested": []}],
}


def flask_default(obj: object) -> bytes:
    app = Flask(__name__)
    app.json = DefaultJSONProvider(app)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    with app.app_context():
        return app.json.response(obj).get_data()


def test_the_bytes_are_flasks_own_compact_json():
    app = SyncFlask(__name__)
    assert isinstance(app.json, CompactJSONProvider)
    with app.app_context():
        response = app.json.response(SAMPLE)
    assert response.get_data() == flask_default(SAMPLE)
    assert response.mimetype == "application/json"


def test_keys_keep_the_order_the_serializer_wrote_them():
    app = SyncFlask(__name__)
    with app.app_context():
        assert app.json.response({"b": 1, "a": 2}).get_data() == b'{"b":1,"a":2}\n'


def test_debug_mode_keeps_flasks_indented_output():
    app = SyncFlask(__name__)
    app.debug = True
    with app.app_context():
        assert b'\n  "a": 1' in app.json.response({"a": 1}).get_data()
