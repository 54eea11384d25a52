"""Graceful stop, reload and worker timeout, with real gunicorn processes and real signals."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.gunicorn_server import SLOW_APP, LoadClient, app_connections, fresh_database, request, run_gunicorn
from tests.polling import wait_until
from webapp.gunicorn.hooks import refuse_new_connections

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gunicorn_db(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        yield url


def _get_in_thread(port: int, path: str, results: list[tuple[int, bytes]]) -> threading.Thread:
    def run() -> None:
        status, _headers, body = request(port, "GET", path, timeout=20)
        results.append((status, body))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for_no_app_connections(database_url: str, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while (count := app_connections(database_url)) and time.monotonic() < deadline:
        time.sleep(0.05)  # a backend process ends a moment after its client said goodbye
    return count


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_under_load_answers_every_accepted_request_exits_0_and_closes_the_pool(gunicorn_db: str, sig: int):
    with run_gunicorn(gunicorn_db, app=SLOW_APP, workers=2) as server:
        new_user = json.dumps({"name": "Ada", "email": f"ada-{uuid.uuid4().hex}@example.com"}).encode()
        status, _, body = request(server.port, "POST", "/users", body=new_user,
                                  headers={"Content-Type": "application/json"})
        assert status == 201, body
        user_path = f"/users/{json.loads(body)['id']}"
        assert app_connections(gunicorn_db) > 0  # the pools are open: closing them is observable
        slow: list[tuple[int, bytes]] = []
        with LoadClient(server.port, user_path, threads=4, max_seconds=10) as load:
            assert wait_until(lambda: load.result.ok >= 20), "the load never got going"
            slow_thread = _get_in_thread(server.port, "/test/sleep/1.0", slow)
            server.wait_for_messages("test sleep started", 1)  # the slow request is in a worker now
            server.send_signal(sig)
            exit_code = server.wait_exit()
            result = load.wait()  # threads end by themselves once connections are refused
        slow_thread.join(timeout=10)

        assert exit_code == 0
        assert result.lost == [], f"{len(result.lost)} accepted requests got no answer: {result.lost[:5]}"
        assert result.ok > 0 and result.refused > 0  # load ran before, and went on after, the stop
        assert slow == [(200, b'{"slept":1.0}')]  # in flight at the signal: finished, not cut
        assert _wait_for_no_app_connections(gunicorn_db) == 0
        stopped = server.messages("worker stopped")
        assert len(stopped) == 2 and all(line["pool_closed"] for line in stopped)


def test_requests_queued_in_the_listen_backlog_at_sigterm_are_all_answered(gunicorn_db: str):
    # One worker, busy for a second: the next connections wait in the kernel's listen backlog,
    # requests already sent. Stock gunicorn resets every one of them when the worker exits.
    with run_gunicorn(gunicorn_db, app=SLOW_APP, workers=1) as server:
        slow: list[tuple[int, bytes]] = []
        slow_thread = _get_in_thread(server.port, "/test/sleep/1.0", slow)
        server.wait_for_messages("test sleep started", 1)  # the only worker is busy now
        queued = []
        for n in range(6):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            conn.sendall(f"GET /livez HTTP/1.1\r\nHost: test\r\nX-Request-ID: queued-{n}\r\n\r\n".encode())
            queued.append(conn)
        server.send_signal(signal.SIGTERM)
        answers = [_read_all(conn) for conn in queued]
        assert server.wait_exit() == 0
        slow_thread.join(timeout=10)

        assert slow and slow[0][0] == 200
        for n, answer in enumerate(answers):
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
            assert f"X-Request-ID: queued-{n}".encode() in answer
        assert server.messages("worker drained the backlog")[0]["served"] == 6


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    with conn:
        while chunk := conn.recv(65536):  # a reset raises ConnectionResetError: the test fails
            chunks.append(chunk)
    return b"".join(chunks)


def test_readiness_turns_503_at_sigterm_while_the_drain_keeps_serving(gunicorn_db: str):
    with run_gunicorn(gunicorn_db, workers=1, env={"SHUTDOWN_DRAIN_SECONDS": "2"}) as server:
        assert server.get("/readyz")[0] == 200
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert wait_until(lambda: server.get("/readyz")[0] == 503), "readiness never turned 503 after SIGTERM"
        status, _, body = server.get("/readyz")
        assert (status, json.loads(body)["status"]) == (503, "shutting_down")
        assert server.get("/livez")[0] == 200  # still serving: a load balancer has time to notice
        assert server.wait_exit() == 0
        assert time.monotonic() - signalled >= 2.0


def test_sighup_under_continuous_load_fails_no_request(gunicorn_db: str):
    with run_gunicorn(gunicorn_db, workers=2, env={"SHUTDOWN_DRAIN_SECONDS": "0.5"}) as server:
        first = {line["pid"] for line in server.messages("worker ready")}
        with LoadClient(server.port, "/livez", threads=4, max_seconds=4) as load:
            assert wait_until(lambda: load.result.ok >= 20), "the load never got going"
            server.send_signal(signal.SIGHUP)
            server.wait_for_messages("worker ready", 4)  # two new workers
            server.wait_for_messages("worker stopped", 2)  # two old ones gone
            served_by_old = load.result.ok
            assert wait_until(lambda: load.result.ok >= served_by_old + 20), "the new workers served nothing"
        result = load.stop()
        assert server.process.poll() is None  # a reload, not a stop

        assert result.lost == [] and result.refused == 0, result
        assert result.ok > 50  # the load really ran through the reload
        now = {line["pid"] for line in server.messages("worker ready")} - first
        assert len(now) == 2


def test_worker_timeout_answers_json_504_with_the_request_id_and_logs_it(gunicorn_db: str):
    with run_gunicorn(gunicorn_db, app=SLOW_APP, workers=1, env={"GUNICORN_TIMEOUT": "2"}) as server:
        started = time.monotonic()
        status, headers, body = server.get("/test/sleep/30.0", headers={"X-Request-ID": "stuck-request-1"})
        assert time.monotonic() - started < 10

        assert status == 504
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Request-ID"] == "stuck-request-1"
        error = json.loads(body)["error"]
        assert (error["code"], error["request_id"]) == ("worker_timeout", "stuck-request-1")
        timeout_line = server.wait_for_messages("worker timeout", 1)[0]
        assert timeout_line["level"] == "ERROR" and timeout_line["request_id"] == "stuck-request-1"
        assert "time.sleep" in timeout_line["stack"]  # where the request was stuck
        request_line = next(line for line in server.messages("request") if line["request_id"] == "stuck-request-1")
        assert (request_line["status"], request_line["path"]) == (504, "/test/sleep/<float:seconds>")
        server.wait_for_messages("worker ready", 2)  # gunicorn replaced the worker
        assert server.get("/livez")[0] == 200
        assert "<html>" not in server.log_text().lower()


def test_refusing_new_connections_keeps_the_queued_ones_and_refuses_the_rest():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = listener.getsockname()
        queued = socket.create_connection(address, timeout=2)
        queued.sendall(b"hello")

        assert refuse_new_connections(listener)
        with pytest.raises(TimeoutError):  # the SYN is dropped: no handshake completes
            socket.create_connection(address, timeout=0.5)
        conn, _ = listener.accept()  # ...but what was queued before is still there, intact
        with conn, queued:
            assert conn.recv(5) == b"hello"
