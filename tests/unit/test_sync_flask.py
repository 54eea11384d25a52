"""SyncFlask: hooks and views are called as they are, and an async one is refused when the app is built."""

from __future__ import annotations

import pytest

from webapp.http import SyncFlask


def test_plain_functions_are_called_as_they_are():
    app = SyncFlask(__name__)

    def view() -> str:
        return "ok"

    assert app.ensure_sync(view) is view  # no per-request coroutine check


def test_an_app_of_plain_functions_passes_the_build_time_check():
    app = SyncFlask(__name__)
    app.get("/x")(lambda: "x")
    app.before_request(lambda: None)
    app.register_error_handler(ValueError, lambda exc: ("bad", 400))
    app.assert_sync_only()
    assert app.test_client().get("/x").data == b"x"


@pytest.mark.parametrize(
    "where", ["view", "before_request", "after_request", "teardown", "teardown_appcontext", "error_handler"]
)
def test_an_async_view_or_hook_is_refused_when_the_app_is_built(where: str):
    app = SyncFlask(__name__)

    async def handler(*_args: object) -> str:
        return "never awaited"

    register = {
        "view": lambda: app.get("/x")(handler),
        "before_request": lambda: app.before_request(handler),
        "after_request": lambda: app.after_request(handler),
        "teardown": lambda: app.teardown_request(handler),
        "teardown_appcontext": lambda: app.teardown_appcontext(handler),
        "error_handler": lambda: app.register_error_handler(ValueError, handler),
    }
    register[where]()
    with pytest.raises(TypeError, match="handler"):
        app.assert_sync_only()



def test_there_are_no_cookie_sessions_a_write_fails_loudly_and_no_cookie_is_ever_set():
    from flask import session

    app = SyncFlask(__name__)
    app.secret_key = "even-with-a-key"  # a key someone adds later must not switch cookie sessions on
    app.testing = True  # let the view's exception reach the test

    @app.get("/read")
    def read() -> str:
        return str(session.get("user", "anonymous"))

    @app.get("/write")
    def write() -> str:
        session["user"] = "mallory"
        return "written"

    client = app.test_client()
    client.set_cookie("session", "forged")
    response = client.get("/read")
    assert response.data == b"anonymous" and "Set-Cookie" not in response.headers
    with pytest.raises(RuntimeError, match="session is unavailable"):
        client.get("/write")
