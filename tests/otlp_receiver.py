"""Collectors for tests: an OTLP/HTTP receiver that decodes what arrives, and one that never answers.

    with OtlpReceiver() as collector:          # OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint
        ...
        spans = collector.wait_for_spans(lambda spans: len(spans) >= 3)
    with SilentCollector() as collector:       # accepts the TCP connection, never reads or answers
        ...
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector saw it (ids as hex, attributes as plain values)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int  # 2 SERVER, 3 CLIENT, 1 INTERNAL (OTLP's enum)
    status_code: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    events: list[str]
    service_name: str
    pid: int = field(default=0)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """A threading HTTP server accepting POST /v1/traces (protobuf), keeping every span decoded."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._keep(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL for OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _keep(self, request: ExportTraceServiceRequest) -> None:
        decoded = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    decoded.append(ReceivedSpan(
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), kind=span.kind, status_code=span.status.code,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        events=[event.name for event in span.events],
                        service_name=resource.get("service.name", ""), pid=int(resource.get("process.pid", 0)),
                    ))
        with self._lock:
            self.requests += 1
            self.spans.extend(decoded)

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for_spans(self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0) -> list[ReceivedSpan]:
        """Poll until done(every span so far) is true; fail with what arrived after timeout seconds."""
        deadline = time.monotonic() + timeout
        while not done(spans := self.received()):
            assert time.monotonic() < deadline, f"the collector never got the spans; it got {spans}"
            time.sleep(0.02)
        return spans

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class SilentCollector:
    """A TCP listener that accepts every connection and never reads from it nor answers: a hung collector."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # held open, unread, until the end

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._held:
            conn.close()
        self._listener.close()
