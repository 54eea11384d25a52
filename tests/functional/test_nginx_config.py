"""deploy/nginx.conf, run by a real nginx in front of stand-in instances that record what reaches them."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bench.nginx import TEMPLATE, Nginx, nginx_binary
from bench.servers import free_port
from tests.gunicorn_server import request
from tests.pgbouncer_server import require
from webapp.settings import Config


class Recorder(BaseHTTPRequestHandler):
    """An instance that answers 200 to anything and remembers each request (method, path, headers)."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *_args: Any) -> None:  # quiet
        pass


@pytest.fixture
def instance() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def resetting_instance() -> Iterator[dict[str, Any]]:
    """An instance that reads a whole request, then resets the connection without answering (a crash)."""
    listener = socket.create_server(("127.0.0.1", 0))
    state: dict[str, Any] = {"port": listener.getsockname()[1], "requests": 0}

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            state["requests"] += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield state
    listener.close()


@pytest.fixture
def nginx_in_front():
    """nginx from the template in front of the given instance ports; stopped at the end."""
    require("nginx", nginx_binary())
    started: list[Nginx] = []

    def start(*ports: int) -> Nginx:
        started.append(Nginx(list(ports)).start())
        return started[-1]

    yield start
    for nginx in started:
        nginx.stop()


@pytest.mark.parametrize("path", ["/metrics", "//metrics", "/%6Detrics", "/metrics/", "/metrics?x=1"])
def test_metrics_is_never_routed_to_an_instance(nginx_in_front, instance, path: str) -> None:
    nginx = nginx_in_front(instance.server_address[1])
    status, headers, body = request(nginx.port, "GET", path)
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    assert instance.seen == []


def test_the_instance_gets_the_real_client_address_and_when_nginx_received_the_request(nginx_in_front, instance):
    nginx = nginx_in_front(instance.server_address[1])
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}
    before = time.time()
    assert request(nginx.port, "GET", "/users/1", headers=forged)[0] == 200
    _, _, headers = instance.seen[0]
    assert headers["X-Real-IP"] == headers["X-Forwarded-For"] == "127.0.0.1"  # replaced, never appended to
    start = re.fullmatch(r"t=(\d+\.\d{3})", headers["X-Request-Start"])
    assert start and before - 0.01 <= float(start.group(1)) <= time.time()


def test_a_post_is_retried_on_the_next_instance_when_the_first_refuses_the_connection(nginx_in_front, instance):
    nginx = nginx_in_front(free_port(), instance.server_address[1])  # nobody listens on the first
    statuses = [request(nginx.port, "POST", "/orders", body=b"{}")[0] for _ in range(4)]
    assert statuses == [200] * 4
    assert [method for method, _, _ in instance.seen] == ["POST"] * 4


def test_a_post_that_reached_an_instance_is_never_resent_but_a_get_is(nginx_in_front, instance, resetting_instance):
    nginx = nginx_in_front(resetting_instance["port"], instance.server_address[1])
    posts = [request(nginx.port, "POST", "/orders", body=b"{}") for _ in range(2)]  # round robin: one each
    failed = [(status, headers, body) for status, headers, body in posts if status != 200]
    assert len(failed) == 1 and resetting_instance["requests"] == 1
    status, headers, body = failed[0]
    assert status == 502 and headers["Retry-After"] == "1" and json.loads(body)["error"]["code"] == "bad_gateway"
    assert [m for m, _, _ in instance.seen] == ["POST"]  # the reset POST was not sent again
    # Once fail_timeout (1 s, counted in whole seconds by nginx) is over, a GET reaches the resetting
    # instance again, is reset there, and is retried on the other: the client sees only 200s.
    deadline = time.monotonic() + 5
    while resetting_instance["requests"] < 2:
        assert time.monotonic() < deadline, "no GET was sent to the resetting instance again"
        assert request(nginx.port, "GET", "/users/1")[0] == 200
        time.sleep(0.05)


def test_a_body_over_max_body_bytes_is_refused_by_nginx_in_the_json_error_shape(nginx_in_front, instance):
    nginx = nginx_in_front(instance.server_address[1])
    status, _, body = request(nginx.port, "POST", "/orders", body=b"x" * (Config.max_body_bytes + 1))
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
    assert instance.seen == []


def test_the_proxys_body_limit_is_the_apps_max_body_bytes() -> None:
    limit = re.search(r"^\s*client_max_body_size (\d+)k;", TEMPLATE.read_text(), re.MULTILINE)
    assert limit and int(limit.group(1)) * 1024 == Config.max_body_bytes
