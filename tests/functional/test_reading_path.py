"""A reader's path through a request is short and never turns back: the webapp modules a GET enters
before its SELECT reaches psycopg, counted on a real request through the real app."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

from flask.testing import FlaskClient

import webapp

PACKAGE = Path(webapp.__file__).resolve().parent
# The number the README states ("Reading it"); the bar is 10.
MODULES_BEFORE_THE_SELECT = 10


def modules_entered_before_the_first_statement(client: FlaskClient, path: str) -> list[str]:
    """The webapp modules (file paths) whose code runs between the WSGI call and psycopg's execute()."""
    entered: list[str] = []
    reached = False

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal reached
        if reached or event != "call":
            return
        code = frame.f_code
        if code.co_name == "execute" and code.co_filename.endswith(str(Path("psycopg", "connection.py"))):
            reached = True  # the SELECT itself (BEGIN went through libpq's PQexec, a C call)
            return
        if code.co_filename.startswith(str(PACKAGE)):
            module = str(Path(code.co_filename).relative_to(PACKAGE.parent))
            if module not in entered:
                entered.append(module)

    sys.setprofile(profile)
    try:
        response = client.get(path)
    finally:
        sys.setprofile(None)
    assert response.status_code == 200 and reached, (response.status_code, response.json)
    return entered


def test_get_user_reaches_its_select_through_at_most_ten_modules_in_layer_order(client: FlaskClient, db):
    db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
    client.get("/users/1")  # the pool's first connection is made (and configured) outside the count
    entered = modules_entered_before_the_first_statement(client, "/users/1")
    assert len(entered) <= MODULES_BEFORE_THE_SELECT, "\n".join(entered)
    # Down the layers, never back up: the web edge, the service, the adapters (the primitives any may use).
    layers = [LAYER_OF[module.split("/")[1]] for module in entered if module.split("/")[1] in LAYER_OF]
    assert layers == sorted(layers), entered
    assert entered[0] == "webapp/web/pipeline.py" and entered[-1].startswith("webapp/postgres/"), entered
    assert not [module for module in entered if module.startswith("webapp/gunicorn/")]


LAYER_OF = {"web": 0, "services": 1, "cache": 2, "postgres": 2}
