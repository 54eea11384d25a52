"""deploy/nginx.conf, run by a real nginx in front of stand-in instances that record what reaches them."""

from __future__ import annotations

import contextlib
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


# --- nginx's own answers: the service's one error shape, never nginx's HTML pages ---------------

def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send data as it is on a new connection and return every byte nginx sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # nginx may answer and close before it has read all of a request it refuses
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        received = b""
        while not complete(received):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received


def complete(raw: bytes) -> bool:
    """Whether raw holds a whole response (nginx then lingers on a connection whose body it refused)."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    length = re.search(rb"^content-length: *(\d+)", head, re.IGNORECASE | re.MULTILINE)
    return bool(separator and length and len(body) >= int(length.group(1)))


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def request_bytes(request_line: str, *headers: str, body: bytes = b"") -> bytes:
    head = "\r\n".join([request_line, *headers, "Connection: close"]) + "\r\n\r\n"
    return head.encode("latin-1") + body


# (what the client sent, the status and code nginx answers it with). Each is refused by nginx itself:
# the instance behind it never sees one.
NGINX_ERRORS = {
    "nul_in_path": (request_bytes("GET /users/%00 HTTP/1.1", "Host: x"), 400, "bad_request"),
    "nul_in_a_path_ending_in_html": (request_bytes("GET /x.html%00 HTTP/1.1", "Host: x"), 400, "bad_request"),
    "malformed_request_line": (b"GET\r\n\r\n", 400, "bad_request"),
    "no_host_in_http_1_1": (request_bytes("GET /users/1 HTTP/1.1"), 400, "bad_request"),
    "header_line_without_colon": (
        request_bytes("GET /users/1 HTTP/1.1", "Host: x", "Authorization Bearer LEAKME"), 400, "bad_request"),
    "content_length_and_transfer_encoding": (
        request_bytes("POST /orders HTTP/1.1", "Host: x", "Content-Length: 5", "Transfer-Encoding: chunked",
                      body=b"0\r\n\r\n"), 400, "bad_request"),
    "chunk_size_not_hex": (
        request_bytes("POST /orders HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                      body=b"zz\r\nhello\r\n0\r\n\r\n"), 400, "bad_request"),
    "chunk_size_of_18_hex_digits": (
        request_bytes("POST /orders HTTP/1.1", "Host: x", "Transfer-Encoding: chunked", body=b"ffffffffffffffffff\r\n"),
        400, "bad_request"),
    "header_of_100_kb": (request_bytes("GET /users/1 HTTP/1.1", "Host: x", "X-Big: " + "a" * 102400), 431,
                         "request_header_fields_too_large"),
    "trace": (request_bytes("TRACE /users/1 HTTP/1.1", "Host: x"), 405, "method_not_allowed"),
    "body_over_max_body_bytes": (
        request_bytes("POST /orders HTTP/1.1", "Host: x", f"Content-Length: {Config.max_body_bytes + 1}"),
        413, "payload_too_large"),
    "request_line_over_8_kb": (request_bytes(f"GET /{'a' * 9000} HTTP/1.1", "Host: x"), 414, "uri_too_long"),
    "unknown_transfer_coding": (
        request_bytes("POST /orders HTTP/1.1", "Host: x", "Transfer-Encoding: xchunked"), 501, "not_implemented"),
    "http_2_request_line": (request_bytes("GET /users/1 HTTP/2.0", "Host: x"), 505, "http_version_not_supported"),
    "metrics": (request_bytes("GET /metrics HTTP/1.1", "Host: x"), 404, "not_found"),
    "an_error_page_asked_for_directly": (request_bytes("GET /.nginx-error/400 HTTP/1.1", "Host: x"), 404, "not_found"),
}


@pytest.fixture(scope="module")
def nginx_for_errors() -> Iterator[tuple[Nginx, ThreadingHTTPServer]]:
    """One nginx for the error cases (each case is its own connection), in front of a recording instance."""
    require("nginx", nginx_binary())
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    nginx = Nginx([server.server_address[1]]).start()
    yield nginx, server
    nginx.stop()
    server.shutdown()
    server.server_close()


def logged(nginx: Nginx, text: str, timeout: float = 3.0) -> bool:
    """Whether an access log line contains text within timeout (nginx writes it when it frees the request)."""
    deadline = time.monotonic() + timeout
    while not any(text in line for line in nginx.access_lines()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def assert_the_service_error_shape(raw: bytes, status: int, code: str) -> str:
    """raw is one JSON error in the service's shape with this status and code; returns its request id."""
    assert b"<center>nginx" not in raw and b"<html" not in raw.lower()
    got_status, headers, body = parse_response(raw)
    assert got_status == status, raw[:300]
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "request_id"} and error["code"] == code and error["message"]
    assert re.fullmatch(r"[0-9a-f]{32}", error["request_id"])  # nginx's $request_id: the client sent none
    assert headers["x-request-id"] == error["request_id"]  # the same id in the header, as the app does
    return str(error["request_id"])


@pytest.mark.parametrize("case", NGINX_ERRORS)
def test_every_error_nginx_answers_itself_is_json_in_the_service_error_shape(nginx_for_errors, case: str) -> None:
    nginx, instance = nginx_for_errors
    data, status, code = NGINX_ERRORS[case]
    before = len(instance.seen)
    request_id = assert_the_service_error_shape(raw_exchange(nginx.port, data), status, code)
    assert len(instance.seen) == before  # refused by nginx: no instance saw it
    assert logged(nginx, f"request_id={request_id}")  # the id the client got is the one nginx logged


def test_nginxs_own_error_keeps_the_clients_sane_request_id_and_replaces_an_insane_one(nginx_for_errors) -> None:
    nginx, _ = nginx_for_errors
    kept = parse_response(
        raw_exchange(nginx.port, request_bytes("TRACE / HTTP/1.1", "Host: x", "X-Request-ID: a-1.b:2")))
    assert kept[1]["x-request-id"] == json.loads(kept[2])["error"]["request_id"] == "a-1.b:2"
    forged = 'x"}},"admin":true,"y":{"z":"'  # would break out of the JSON body if it were written into it
    replaced = parse_response(
        raw_exchange(nginx.port, request_bytes("TRACE / HTTP/1.1", "Host: x", f"X-Request-ID: {forged}")))
    assert re.fullmatch(r"[0-9a-f]{32}", json.loads(replaced[2])["error"]["request_id"])


def test_the_instance_gets_the_request_id_nginx_logs(nginx_in_front, instance) -> None:
    nginx = nginx_in_front(instance.server_address[1])
    assert request(nginx.port, "GET", "/users/1", headers={"X-Request-ID": "client-id-1"})[0] == 200
    assert request(nginx.port, "GET", "/users/2")[0] == 200
    (_, _, kept), (_, _, made) = instance.seen
    assert kept["X-Request-ID"] == "client-id-1"
    assert re.fullmatch(r"[0-9a-f]{32}", made["X-Request-ID"])
    assert logged(nginx, f"request_id={made['X-Request-ID']}")


class ErrorAnswerer(BaseHTTPRequestHandler):
    """An instance whose own answer is its path's status with a JSON error body: /status/503 → 503."""

    def do_GET(self) -> None:
        status = int(self.path.rsplit("/", 1)[1])
        body = json.dumps({"error": {"code": f"instance_{status}", "message": "the instance's own", "request_id": "i"}})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.mark.parametrize("status", [400, 404, 405, 413, 500, 502, 503, 504])
def test_the_instances_own_error_answers_pass_through_nginx_unchanged(nginx_in_front, status: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ErrorAnswerer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        nginx = nginx_in_front(server.server_address[1])
        got, _, body = request(nginx.port, "GET", f"/status/{status}")
        assert got == status and json.loads(body)["error"]["code"] == f"instance_{status}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_instance_that_does_not_accept_the_connection_in_time_gets_a_json_504(nginx_in_front) -> None:
    # A listener whose accept queue is full: Linux drops further SYNs, so nginx's connect times out
    # (proxy_connect_timeout, 1 s) instead of being refused.
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers: list[socket.socket] = []
    try:
        while True:  # fill the accept queue: the first connection it drops is the proof
            filler = socket.socket()
            filler.settimeout(0.5)
            fillers.append(filler)
            try:
                filler.connect(listener.getsockname())
            except TimeoutError:
                break
            assert len(fillers) < 10, "the listener's accept queue never filled"
        nginx = nginx_in_front(listener.getsockname()[1])
        raw = raw_exchange(nginx.port, request_bytes("GET /users/1 HTTP/1.1", "Host: x"), timeout=10)
        assert_the_service_error_shape(raw, 504, "gateway_timeout")
        assert parse_response(raw)[1]["retry-after"] == "1"
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


@pytest.mark.slow
def test_a_request_that_does_not_arrive_within_the_timeouts_is_closed_unanswered_as_documented(nginx_for_errors):
    # nginx 1.22 never answers its own 408 (client_header_timeout, client_body_timeout): it ends the
    # request by closing the connection, whatever error_page says. deploy/nginx.conf says so; this
    # test fails if a later nginx answers, so that the answer can be made JSON then.
    nginx, _ = nginx_for_errors
    timeout = int(re.search(r"^\s*client_header_timeout (\d+)s;", TEMPLATE.read_text(), re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert int(re.search(r"^\s*client_body_timeout (\d+)s;", TEMPLATE.read_text(), re.MULTILINE).group(1)) == timeout  # type: ignore[union-attr]
    partial = {
        "header": b"GET /users/1 HTTP/1.1\r\nHost: x\r\n",  # the blank line never comes
        "body": request_bytes("POST /orders HTTP/1.1", "Host: x", "Content-Length: 10", body=b"ab"),
    }
    results: dict[str, tuple[bytes, float]] = {}

    def send(name: str) -> None:
        started = time.monotonic()
        results[name] = (raw_exchange(nginx.port, partial[name], timeout=timeout + 10), time.monotonic() - started)

    threads = [threading.Thread(target=send, args=(name,)) for name in partial]  # both at once: one wait
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, (raw, elapsed) in results.items():
        assert timeout - 1 <= elapsed <= timeout + 5, (name, elapsed)
        if raw:  # an nginx that answers: then it must be the service's JSON 408
            assert_the_service_error_shape(raw, 408, "request_timeout")
        else:
            assert raw == b""  # the documented close: not one byte, never an HTML page
    assert sum(' 408 ' in line for line in nginx.access_lines()) >= 2  # logged as 408 all the same
