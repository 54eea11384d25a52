"""Structured logs: one JSON object per line, the request line's fields, levels by meaning,
request ids, and no secret in any line — in-process and from a real gunicorn's stdout."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from flask import Flask
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import close_app, make_config
from tests.gunicorn_server import fresh_database, request, run_gunicorn
from webapp import create_app
from webapp.observability.logs import HANDLER_NAME, configure_logging
from webapp.web import pipeline

GENERATED_ID = re.compile(r"^[0-9a-f]{22}$")  # random per-process prefix + counter (http.request_id_factory)
REQUEST_FIELDS = {"method", "path", "raw_path", "status", "duration_ms", "request_id", "remote_addr"}


class LoggedApp:
    """The real app whose JSON log lines go to a buffer the test reads."""

    def __init__(self, app: Flask, stream: io.StringIO):
        self.app, self.stream, self.client = app, stream, app.test_client()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]  # each line must be JSON

    def requests(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["message"] == "request"]


@pytest.fixture
def logged_app(database_url: str, db) -> Iterator[Callable[..., LoggedApp]]:
    """Build the real app with the given environment; its log lines go to a buffer."""
    built: list[Flask] = []

    def build(add_routes: Callable[[Flask], None] | None = None, **env: str) -> LoggedApp:
        app = create_app(make_config(database_url, **{"LOG_LEVEL": "info", **env}))
        built.append(app)
        if add_routes:
            add_routes(app)
        stream = io.StringIO()
        configure_logging(app.extensions["webapp"]["config"].log_level, stream)
        return LoggedApp(app, stream)

    yield build
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)  # it writes to the test's buffer; the next create_app adds its own
    for app in built:
        close_app(app)


def boom_route(app: Flask) -> None:
    @app.get("/test/boom")
    def boom() -> str:
        raise RuntimeError("boom")


def test_each_request_logs_one_line_with_route_template_and_no_query_string(logged_app):
    logged = logged_app()
    response = logged.client.get("/users/424242?token=abc", headers={"X-Request-ID": "req-1"})
    assert response.status_code == 404

    (line,) = logged.requests()
    assert line.keys() >= REQUEST_FIELDS
    assert line["method"] == "GET"
    assert line["path"] == "/users/<id:user_id>"  # bounded: the same for every user id
    assert line["raw_path"] == "/users/424242"  # never the query string
    assert (line["status"], line["request_id"], line["remote_addr"]) == (404, "req-1", "127.0.0.1")
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["level"] == "INFO" and line["logger"] == "webapp.http"
    assert {"time", "pid"} <= line.keys()


def test_the_fast_request_line_has_every_lines_header_fields_and_escapes_any_path(logged_app):
    logged = logged_app()
    assert logged.client.get('/users/"quoted"\\back%09slash-é-☃').status_code == 404

    (line,) = logged.requests()  # the line parsed as JSON: quotes, backslashes and the tab were escaped
    assert line["raw_path"] == '/users/"quoted"\\back\tslash-é-☃'
    assert (line["level"], line["logger"], line["pid"]) == ("INFO", "webapp.http", os.getpid())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line["time"]
    logging.getLogger("webapp").warning("an ordinary line")  # through logging proper
    app_line = next(entry for entry in logged.lines() if entry["message"] == "an ordinary line")
    assert list(line)[:5] == list(app_line)[:5] == ["time", "level", "logger", "pid", "message"]


def test_an_unknown_path_is_logged_under_one_shared_label(logged_app):
    logged = logged_app()
    logged.client.get("/no/such/thing/17")
    (line,) = logged.requests()
    assert (line["path"], line["raw_path"]) == ("<unmatched>", "/no/such/thing/17")


def test_client_errors_are_info_never_error(logged_app):
    logged = logged_app()
    client = logged.client
    statuses = [
        client.get("/users/999999").status_code,
        client.post("/users", json={"name": ""}).status_code,
        client.post("/users", data="x", content_type="text/plain").status_code,
        client.delete("/users/1").status_code,
    ]
    assert statuses == [404, 422, 415, 405]
    assert [line["level"] for line in logged.requests()] == ["INFO"] * 4
    assert not [line for line in logged.lines() if line["level"] == "ERROR"]


def test_a_server_error_is_logged_at_error_with_exception_info_and_the_request_id(logged_app):
    logged = logged_app(add_routes=boom_route)
    response = logged.client.get("/test/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.json["error"]["request_id"] == "boom-1"

    errors = [line for line in logged.lines() if line["level"] == "ERROR"]
    exception_line = next(line for line in errors if "exc_info" in line)
    assert "RuntimeError: boom" in exception_line["exc_info"]
    assert exception_line["request_id"] == "boom-1"
    (request_line,) = logged.requests()
    assert (request_line["level"], request_line["status"]) == ("ERROR", 500)


@pytest.mark.parametrize("level, shown", [("info", False), ("debug", True)])
def test_debug_lines_appear_only_with_log_level_debug(logged_app, level: str, shown: bool):
    logged = logged_app(LOG_LEVEL=level)
    logging.getLogger("webapp.test").debug("a detail")
    logging.getLogger("webapp.test").info("a fact")
    messages = [line["message"] for line in logged.lines()]
    assert ("a detail" in messages) is shown
    assert "a fact" in messages


def test_the_request_id_and_deadline_end_with_their_request(logged_app):
    # The test client runs the app in this thread: a value left in the ContextVars would stamp the
    # next lines logged here (a worker's own, between requests) with a finished request's id.
    logged = logged_app()
    assert logged.client.get("/users/999999", headers={"X-Request-ID": "req-1"}).status_code == 404
    assert pipeline.current_request_id() is None
    with pytest.raises(RuntimeError, match="outside a request"):
        pipeline.current_deadline()
    logging.getLogger("webapp.test").warning("between requests")
    assert "request_id" not in logged.lines()[-1]


def test_a_sane_request_id_is_kept_and_echoed_in_header_and_error_body(logged_app):
    logged = logged_app()
    response = logged.client.get("/users/999999", headers={"X-Request-ID": "edge-7f3a:1.2_x-y"})
    assert response.headers["X-Request-ID"] == "edge-7f3a:1.2_x-y"
    assert response.json["error"]["request_id"] == "edge-7f3a:1.2_x-y"
    assert logged.requests()[0]["request_id"] == "edge-7f3a:1.2_x-y"


@pytest.mark.parametrize("sent", [None, "", "x" * 129, "has space", "<script>", "semi;colon", "ünïcode"])
def test_a_missing_or_insane_request_id_is_replaced_by_a_generated_one(logged_app, sent: str | None):
    logged = logged_app()
    headers = {} if sent is None else {"X-Request-ID": sent}
    response = logged.client.get("/users/999999", headers=headers)
    generated = response.headers["X-Request-ID"]
    assert GENERATED_ID.match(generated)
    assert response.json["error"]["request_id"] == generated
    assert logged.requests()[0]["request_id"] == generated


# --- secrets -------------------------------------------------------------------------------------


class Secrets:
    """Distinct values planted in every place a secret travels; none may appear in a log line."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.password = f"dbpw-{tag}"
        self.authorization = f"auth-{tag}"
        self.cookie = f"cookie-{tag}"
        self.query = f"query-{tag}"
        self.body = f"bodypw-{tag}"
        self.metrics_token = f"metrics-{tag}"

    def all(self) -> list[str]:
        return [self.password, self.authorization, self.cookie, self.query, self.body, self.metrics_token]

    def database_url(self, url: str) -> str:
        """url with our password in it, checked to connect: the test server trusts loopback and local
        sockets, so any password works, over TCP or on an embedded server's unix socket (`user:pw@/db?host=/dir`)."""
        parts = urlsplit(url)
        user, _, host = parts.netloc.rpartition("@")
        user = user.split(":")[0] or "postgres"
        planted = urlunsplit(parts._replace(netloc=f"{user}:{self.password}@{host}"))
        assert conninfo_to_dict(planted)["password"] == self.password  # libpq reads it as the password
        psycopg.connect(planted, connect_timeout=5).close()  # and the app can connect with it
        return planted

    def send(self, get: Callable[..., Any], post: Callable[..., Any]) -> None:
        """The requests that carry the secrets: headers, query strings, bodies, a bad metrics token."""
        carrying = {"Authorization": f"Bearer {self.authorization}", "Cookie": f"session={self.cookie}"}
        get(f"/users/1?token={self.query}", carrying)
        get(f"/no/such/path?api_key={self.query}", carrying)
        get(f"/readyz?token={self.query}", carrying)
        get("/metrics", {"Authorization": f"Bearer wrong-{self.metrics_token}"})
        post("/users", {"name": "x", "email": "not-an-email", "password": self.body})
        post("/users", f'{{"password": "{self.body}"'.encode())  # malformed JSON


def test_no_secret_reaches_any_in_process_log_line(logged_app, database_url: str, caplog):
    secrets = Secrets()
    logged = logged_app(
        add_routes=boom_route, LOG_LEVEL="debug", METRICS_TOKEN=secrets.metrics_token,
        DATABASE_URL=secrets.database_url(database_url),
    )
    caplog.set_level(logging.DEBUG)
    client = logged.client

    def post(path: str, body: Any) -> None:
        kwargs = {"json": body} if isinstance(body, dict) else {"data": body, "content_type": "application/json"}
        client.post(path, headers={"Authorization": f"Bearer {secrets.authorization}"}, **kwargs)

    secrets.send(lambda path, headers: client.get(path, headers=headers), post)
    client.get(f"/test/boom?token={secrets.query}", headers={"Authorization": f"Bearer {secrets.authorization}"})

    assert len(logged.requests()) == 7  # every request was logged (probes too, at debug)
    text = logged.stream.getvalue()
    records = "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)
    for secret in secrets.all():
        assert secret not in text
        assert secret not in records


@pytest.mark.slow
def test_gunicorn_stdout_is_json_lines_only_and_carries_no_secret(server_url: str):
    secrets = Secrets()
    with fresh_database(server_url) as database_url:
        env = {"LOG_LEVEL": "debug", "METRICS_TOKEN": secrets.metrics_token}
        with run_gunicorn(secrets.database_url(database_url), workers=2, env=env) as server:

            def post(path: str, body: Any) -> None:
                data = json.dumps(body).encode() if isinstance(body, dict) else body
                request(server.port, "POST", path, body=data, headers={"Content-Type": "application/json"})

            secrets.send(lambda path, headers: server.get(path, headers=headers), post)
            # A request line gunicorn itself rejects (a space in the path): its error log quotes it.
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
                raw.sendall(f"GET /us ers?token={secrets.query} HTTP/1.1\r\n\r\n".encode())
                raw.recv(4096)
            server.send_signal(signal.SIGTERM)
            assert server.wait_exit() == 0

            lines = server.log_lines()  # fails on any stdout line that is not JSON
            output = server.log_text() + server.stderr_text()
            assert server.stderr_text() == ""  # nothing bypasses the JSON lines
    assert {"gunicorn.error", "webapp.app", "webapp.http", "webapp.lifecycle"} <= {line["logger"] for line in lines}
    logged_paths = {line["raw_path"] for line in lines if line["message"] == "request"}
    assert {"/users/1", "/no/such/path", "/readyz", "/metrics", "/users"} <= logged_paths
    assert any(line.get("error", "").startswith("Invalid") for line in lines)  # the rejected line was logged...
    for secret in secrets.all():
        assert secret not in output  # ...without its query string
