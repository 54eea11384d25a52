"""Tracing through a real gunicorn: each worker exports its own spans (its provider is built after the fork),
and a stop flushes them: SIGTERM under load loses no span of a request that was answered."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.gunicorn_server import fresh_database, request, run_gunicorn
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.slow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SERVER = 2


@pytest.fixture
def database(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
        yield url


def test_a_worker_exports_the_server_span_and_sql_spans_of_a_traced_request_and_logs_its_trace_id(database):
    with OtlpReceiver() as collector, run_gunicorn(database, workers=2, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50",
    }) as server:
        status, headers, _ = server.get("/users/1", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})

        assert status == 200
        spans = collector.wait_for_spans(lambda spans: any(s.kind == SERVER for s in spans))
        server_span = next(s for s in spans if s.name == "GET /users/<id:user_id>")
        assert (server_span.trace_id, server_span.parent_span_id) == (TRACE_ID, PARENT_ID)
        transaction = next(s for s in spans if s.name == "transaction")
        select = next(s for s in spans if s.name == "SELECT")
        assert transaction.parent_span_id == server_span.span_id and select.parent_span_id == transaction.span_id
        assert headers["traceresponse"] == f"00-{TRACE_ID}-{server_span.span_id}-01"
        line = next(line for line in server.messages("request") if line.get("request_id") == headers["X-Request-ID"])
        assert (line["trace_id"], line["span_id"]) == (TRACE_ID, server_span.span_id)


def test_sigterm_under_load_loses_no_span_of_a_request_that_was_answered(database):
    answered: list[str] = []  # the trace id of every 200, from its traceresponse
    lock, stop = threading.Lock(), threading.Event()

    def load(port: int) -> None:
        deadline = time.monotonic() + 10  # bounded in time and count
        for _ in range(2000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                status, headers, _ = request(port, "GET", "/users/1", timeout=5)
            except OSError:
                return  # the server is gone
            if status == 200:
                with lock:
                    answered.append(headers["traceresponse"].split("-")[1])

    # The default schedule delay (5 s): without the exit hook's flush, the last spans would stay queued.
    with OtlpReceiver() as collector, run_gunicorn(database, workers=2, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "SHUTDOWN_DRAIN_SECONDS": "0.5",
    }) as server:
        threads = [threading.Thread(target=load, args=(server.port,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        server.send_signal(signal.SIGTERM)
        assert server.wait_exit(timeout=30) == 0
        stop.set()
        for thread in threads:
            thread.join(timeout=15)

        exported = {s.trace_id for s in collector.received() if s.kind == SERVER}
        assert len(answered) > 50, len(answered)
        assert set(answered) <= exported, f"{len(set(answered) - exported)} of {len(answered)} answered requests lost"
        stopped = server.messages("worker stopped")
        assert len(stopped) == 2 and all(line["spans_flushed"] is True for line in stopped), stopped
