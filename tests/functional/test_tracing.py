"""Tracing through the real app, a real Postgres and Redis, and a real OTLP/HTTP receiver: W3C trace context in
and out, the spans a request makes, trace ids in its log lines, and a collector that never hurts a request."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from tests.conftest import close_app, make_config
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, SilentCollector
from webapp import create_app
from webapp.observability.logs import configure_logging
from webapp.observability.tracing import ERROR_ENVIRON_KEY
from webapp.web import errors

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP's span kinds
ERROR = 2  # OTLP's status code
# redis-py imports OpenTelemetry's API by itself when it is installed; these are ours to bring in.
TRACING_MODULES = ("webapp.observability.tracing", "opentelemetry.sdk.trace", "opentelemetry.exporter",
                   "opentelemetry.instrumentation")


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def traced_app(database_url: str, db, collector) -> Iterator[Callable[..., tuple[Flask, io.StringIO]]]:
    """Build the real app with tracing settings; its JSON log lines go to a buffer.

    (Needs the collector: the apps' last flush, at teardown, then finds it still listening.)"""
    built: list[Flask] = []

    def build(**env: str) -> tuple[Flask, io.StringIO]:
        app = create_app(make_config(database_url, OTEL_BSP_SCHEDULE_DELAY="20", **env))
        built.append(app)
        stream = io.StringIO()
        configure_logging("info", stream)
        return app, stream

    yield build
    for app in built:
        close_app(app)


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


def test_a_request_with_a_traceparent_continues_that_trace_with_a_server_span_named_by_its_route(
    traced_app, collector: OtlpReceiver, db,
):
    db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
    app, stream = traced_app(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, OTEL_SERVICE_NAME="users-api")

    response = app.test_client().get("/users/1", headers={"traceparent": TRACEPARENT, "tracestate": "vendor=x"})

    assert response.status_code == 200
    spans = collector.wait_for_spans(lambda spans: any(s.kind == SERVER for s in spans))
    server = one(spans, "GET /users/<id:user_id>")
    assert (server.trace_id, server.parent_span_id, server.kind) == (TRACE_ID, PARENT_ID, SERVER)
    assert server.service_name == "users-api"
    assert server.attributes == {
        "http.request.method": "GET", "http.route": "/users/<id:user_id>", "url.path": "/users/1",
        "url.scheme": "http", "http.response.status_code": 200,
    }
    # W3C Trace Context Level 2: the response names the trace and this server's span in it.
    assert response.headers["traceresponse"] == f"00-{TRACE_ID}-{server.span_id}-01"
    # Its log line carries the trace and span next to the request id.
    line = next(line for line in log_lines(stream) if line["message"] == "request")
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, server.span_id)
    assert line["request_id"] == response.headers["X-Request-ID"]


def test_a_request_spans_its_transaction_and_each_sql_statement_without_values(traced_app, collector, db):
    db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
    app, _ = traced_app(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint)

    app.test_client().get("/users/1", headers={"traceparent": TRACEPARENT})

    spans = collector.wait_for_spans(lambda spans: any(s.kind == SERVER for s in spans))
    server, transaction = one(spans, "GET /users/<id:user_id>"), one(spans, "transaction")
    select = one(spans, "SELECT")
    assert transaction.parent_span_id == server.span_id and transaction.kind == INTERNAL
    assert transaction.attributes == {
        "db.system.name": "postgresql", "db.transaction.read_only": True, "db.transaction.outcome": "rolled_back",
    }
    assert select.parent_span_id == transaction.span_id and select.kind == CLIENT
    assert select.attributes["db.system"] == "postgresql"
    assert select.attributes["db.statement"] == "SELECT id, name, email, created_at FROM users WHERE id = %s"
    assert {span.trace_id for span in spans} == {TRACE_ID}


def test_a_committed_write_says_so_on_its_transaction_span(traced_app, collector):
    app, _ = traced_app(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint)

    response = app.test_client().post("/users", json={"name": "Bo", "email": "bo@example.org"})

    assert response.status_code == 201
    spans = collector.wait_for_spans(lambda spans: any(s.kind == SERVER for s in spans))
    assert one(spans, "transaction").attributes["db.transaction.outcome"] == "committed"
    assert one(spans, "INSERT").attributes["db.statement"].startswith("INSERT INTO users (name, email) VALUES (%s, %s)")


def test_each_redis_call_is_a_span_with_its_arguments_hidden(traced_app, collector, redis_url, db):
    db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
    redis.Redis.from_url(redis_url).delete("user:1")  # left by another test: this one needs a miss
    app, _ = traced_app(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, REDIS_URL=redis_url)

    app.test_client().get("/users/1")  # a miss: GET, then SET

    spans = collector.wait_for_spans(lambda spans: any(s.kind == SERVER for s in spans))
    server = one(spans, "GET /users/<id:user_id>")
    redis_spans = [span for span in spans if span.attributes.get("db.system") == "redis"]
    assert [span.name for span in redis_spans] == ["GET", "SET"]
    assert all(span.parent_span_id == server.span_id and span.kind == CLIENT for span in redis_spans)
    assert all("ann" not in str(span.attributes).lower() for span in redis_spans)


@pytest.mark.parametrize("traceparent", [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # an all-zero trace id is invalid
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # so is an all-zero parent
    "not a traceparent",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is forbidden
])
def test_an_invalid_traceparent_starts_a_new_trace_and_is_never_an_error(traced_app, collector, traceparent):
    app, _ = traced_app(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint)

    response = app.test_client().get("/livez", headers={"traceparent": traceparent})

    assert response.status_code == 200
    server = one(collector.wait_for_spans(lambda spans: len(spans) >= 1), "GET /livez")
    assert server.parent_span_id == "" and server.trace_id not in (TRACE_ID, "0" * 32)
    # Flags 03: sampled, and (Trace Context Level 2) a trace id this server drew at random.
    assert response.headers["traceresponse"] == f"00-{server.trace_id}-{server.span_id}-03"


def test_a_5xx_is_an_error_on_the_server_span_with_its_exception_and_a_4xx_is_not(traced_app, collector):
    app, _ = traced_app(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint)

    def boom() -> str:
        raise RuntimeError("a bug")

    app.add_url_rule("/test/boom", view_func=boom)
    client = app.test_client()

    assert client.get("/test/boom").status_code == 500
    assert client.get("/users/999").status_code == 404

    spans = collector.wait_for_spans(lambda spans: len(spans) >= 3)
    failed, missing = one(spans, "GET /test/boom"), one(spans, "GET /users/<id:user_id>")
    assert failed.status_code == ERROR and failed.attributes["http.response.status_code"] == 500
    assert failed.attributes["error.type"] == "RuntimeError" and failed.events == ["exception"]
    assert missing.status_code == 0 and missing.attributes["http.response.status_code"] == 404


def test_an_unmatched_path_is_named_by_its_method_only_never_the_raw_path(traced_app, collector):
    app, _ = traced_app(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint)

    assert app.test_client().get("/no/such/thing/42").status_code == 404

    server = collector.wait_for_spans(lambda spans: len(spans) >= 1)[0]
    assert server.name == "GET" and "http.route" not in server.attributes


def test_a_sampled_out_request_costs_no_export_but_still_names_its_trace(traced_app, collector, db):
    db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
    app, stream = traced_app(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
                             OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0")

    response = app.test_client().get("/users/1")
    assert app.extensions["webapp"]["tracing"].shutdown(timeout=5)  # everything queued went out

    assert response.status_code == 200 and collector.requests == 0 and collector.received() == []
    assert int(response.headers["traceresponse"][-2:], 16) & 1 == 0  # the sampled flag is off
    trace_id = response.headers["traceresponse"].split("-")[1]
    line = next(line for line in log_lines(stream) if line["message"] == "request")
    assert line["trace_id"] == trace_id


def test_a_collector_that_never_answers_costs_requests_nothing_and_its_dropped_spans_are_counted(traced_app, db):
    db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
    with SilentCollector() as collector:
        app, _ = traced_app(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, OTEL_BSP_MAX_QUEUE_SIZE="8",
                            OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4", OTEL_EXPORTER_OTLP_TIMEOUT="30000")
        client = app.test_client()
        client.get("/users/1")  # the pool's first connection, outside the timing
        slowest = 0.0
        for _ in range(40):  # 120 spans (server, transaction, SELECT) into a queue of 8
            started = time.perf_counter()
            assert client.get("/users/1").status_code == 200
            slowest = max(slowest, time.perf_counter() - started)

        assert collector.connections >= 1  # the exporter did reach it, and is stuck waiting there
        assert slowest < 0.5  # an export hangs for 30 s: no request waited for it
        metrics = client.get("/metrics").get_data(as_text=True)
        queue_full = 'otel_spans_dropped_total{reason="queue_full"}'
        dropped = next(line for line in metrics.splitlines() if line.startswith(queue_full))
        assert float(dropped.split()[-1]) >= 100
        # The worker's exit is bounded too: it gives up on the hung export instead of waiting it out.
        started = time.perf_counter()
        assert app.extensions["webapp"]["tracing"].shutdown(timeout=0.3) is False
        assert time.perf_counter() - started < 1.0


def test_tracing_is_off_without_an_endpoint_and_then_no_tracing_code_is_even_imported(database_url, db):
    program = (
        "import sys, json\n"
        "from tests.conftest import make_config, close_app\n"
        "from webapp import create_app\n"
        f"TRACING_MODULES = {TRACING_MODULES!r}\n"
        f"app = create_app(make_config({database_url!r}, OTEL_SERVICE_NAME='x', OTEL_TRACES_SAMPLER='always_on'))\n"
        "response = app.test_client().get('/livez', headers={'traceparent': " + repr(TRACEPARENT) + "})\n"
        "close_app(app)\n"
        "print(json.dumps({'status': response.status_code, 'headers': sorted(response.headers.keys()),\n"
        "    'otel': sorted(m for m in sys.modules if m.startswith(TRACING_MODULES)),\n"
        "    'tracing': app.extensions['webapp']['tracing'] is None}))\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "headers": result["headers"], "otel": [], "tracing": True}
    assert "traceresponse" not in [h.lower() for h in result["headers"]]
    assert '"trace_id"' not in out.stdout


def test_the_errors_step_and_the_tracing_module_agree_where_a_5xx_exception_is_left():
    assert errors.ERROR_ENVIRON_KEY == ERROR_ENVIRON_KEY
