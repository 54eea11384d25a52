"""OpenTelemetry tracing: W3C trace context in and out, spans exported over OTLP/HTTP, never making a request wait.

Imported only when an OTLP endpoint is configured (create_app), so the default install runs without the
`[tracing]` extra and a GET pays nothing for it. create_app builds one Tracing per gunicorn worker,
after the fork (preload_app is off): the batch processor's export thread must be born in the
process whose spans it sends. The worker's exit hook flushes it within the stop window.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from typing import Any

from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from webapp.observability.logs import TRACE_IDS
from webapp.settings import TracingSettings

# Called with (reason, count) for every span that will never reach the collector.
OnDrop = Callable[[str, int], None]


def sampler_for(name: str, ratio: float) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER names (validated in settings), with OTEL_TRACES_SAMPLER_ARG as its ratio."""
    fixed: dict[str, Sampler] = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}
    root = fixed.get(name.removeprefix("parentbased_")) or TraceIdRatioBased(ratio)
    return ParentBased(root) if name.startswith("parentbased_") else root


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, counting the spans it drops when its queue is full.

    Trap: a full queue drops the oldest span with one rate-limited warning and no count. The
    queue is the SDK's internal deque; the never-answering-collector test fails if it moves.
    """

    def __init__(self, exporter: SpanExporter, settings: TracingSettings, on_drop: OnDrop):
        super().__init__(
            exporter,
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.schedule_delay_ms,
            max_export_batch_size=settings.max_export_batch_size,
            export_timeout_millis=settings.export_timeout_ms,
        )
        self._queue = self._batch_processor._queue
        self._max_queue_size = settings.max_queue_size
        self._on_drop = on_drop

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled and len(self._queue) >= self._max_queue_size:
            self._on_drop("queue_full", 1)
        super().on_end(span)


class CountingExporter(SpanExporter):
    """An exporter that counts the spans of every batch the collector did not take (down, refusing, too slow)."""

    def __init__(self, exporter: SpanExporter, on_drop: OnDrop):
        self._exporter = exporter
        self._on_drop = on_drop

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self._on_drop("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class _HeaderGetter(Getter[Any]):
    """Reads W3C headers from werkzeug's case-insensitive Headers."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: Any) -> list[str]:
        return [key for key, _ in carrier.items()]


class Tracing:
    """One worker's tracer provider and the spans the app makes with it: server, transaction; SQL and Redis
    through OpenTelemetry's own instrumentations, per connection and per client (nothing patched globally)."""

    def __init__(self, settings: TracingSettings, on_drop: OnDrop):
        self.settings = settings
        resource = Resource.create({"service.name": settings.service_name, "service.version": _version()})
        # shutdown_on_exit=False: the SDK's atexit shutdown waits up to 30 s on a collector that
        # never answers; the worker's exit hook flushes and shuts down within its own bound instead.
        self.provider = TracerProvider(
            sampler=sampler_for(settings.sampler, settings.sampler_arg), resource=resource, shutdown_on_exit=False,
        )
        # The timeout goes in explicitly, in seconds: the exporter would read OTEL_EXPORTER_OTLP_TIMEOUT as seconds.
        exporter = OTLPSpanExporter(endpoint=settings.endpoint, timeout=settings.export_timeout_ms / 1000)
        self.provider.add_span_processor(CountingBatchSpanProcessor(CountingExporter(exporter, on_drop), settings,
                                                                    on_drop))
        self.tracer = self.provider.get_tracer("webapp", _version())
        self._propagator = TraceContextTextMapPropagator()
        self._getter = _HeaderGetter()

    # --- the server span: web/pipeline.py's trace step ----------------------------------------

    def serve(self, req: Any, next_handler: Callable[[Any], Any]) -> Any:
        """Run next_handler(req) in a server span continuing the caller's W3C trace (a new one if absent or invalid)."""
        # An unparsable traceparent extracts to an empty context: a new trace, never an error.
        parent = self._propagator.extract(req.headers, getter=self._getter)
        url_rule, method = req.url_rule, req.method
        route = url_rule.rule if url_rule is not None else None
        attributes = {"http.request.method": method, "url.path": req.path, "url.scheme": req.scheme}
        if route is not None:
            attributes["http.route"] = route
        # Named by the route template, never the raw path (bounded names; ids are not in them).
        span = self.tracer.start_span(f"{method} {route}" if route else method, context=parent,
                                      kind=SpanKind.SERVER, attributes=attributes)
        token = context.attach(trace.set_span_in_context(span, parent))
        ids_token = TRACE_IDS.set(current_trace_ids)
        try:
            response = next_handler(req)
        except BaseException as exc:  # the errors step answers everything; this is a bug in a step outside it
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            span.end()
            raise
        finally:
            TRACE_IDS.reset(ids_token)
            context.detach(token)
        status = response.status_code
        span.set_attribute("http.response.status_code", status)
        if status >= 500:  # a 4xx is the client's doing: not an error of this server span (semantic conventions)
            error = req.environ.get(ERROR_ENVIRON_KEY)
            if error is not None:
                span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__ if error is not None else str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        response.headers["traceresponse"] = _traceresponse(span.get_span_context())
        return response

    # --- the transaction span: postgres/unit_of_work.py ---------------------------------------

    @contextmanager
    def transaction(self, read_only: bool) -> Iterator[TransactionSpan]:
        """A span around one transaction, current while it runs, so its statements' spans are its children."""
        with self.tracer.start_as_current_span(
            "transaction", kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False,
            attributes={"db.system.name": "postgresql", "db.transaction.read_only": read_only},
        ) as span:
            yield TransactionSpan(span)

    # --- the instrumentations ------------------------------------------------------------------

    def instrument_connection(self, conn: Any) -> None:
        """A span per statement run on conn (psycopg's instrumentation; the text with placeholders, no values)."""
        PsycopgInstrumentor.instrument_connection(conn, tracer_provider=self.provider)

    def instrument_redis(self, client: Any) -> None:
        """A span per Redis command (redis' instrumentation; arguments replaced by '?')."""
        RedisInstrumentor.instrument_client(client, tracer_provider=self.provider)

    # --- the end of a worker ------------------------------------------------------------------

    def shutdown(self, timeout: float) -> bool:
        """Export what is queued within timeout seconds, then stop; False if the collector did not take it all in time.

        Trap: the SDK's force_flush ignores its timeout (it waits for every export), so it runs
        on a thread of its own that the worker stops waiting for.
        """
        flusher = threading.Thread(target=self.provider.force_flush, name="otel-flush", daemon=True)
        flusher.start()
        flusher.join(timeout)
        flushed = not flusher.is_alive()
        if flushed:
            self.provider.shutdown()  # the export thread ends; with spans still queued it would wait again
        return flushed


# Where the errors step leaves the exception it answered with a 5xx, for the server span (web/errors.py).
ERROR_ENVIRON_KEY = "webapp.error"


class TransactionSpan:
    """What the unit of work tells its span: a failed statement or commit, and how the transaction ended."""

    def __init__(self, span: trace.Span):
        self._span = span

    def failed(self, exc: BaseException) -> None:
        self._span.record_exception(exc)
        self._span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))

    def ended(self, outcome: str) -> None:
        self._span.set_attribute("db.transaction.outcome", outcome)


def current_trace_ids() -> tuple[str, str]:
    """(trace_id, span_id) of the current span, as hex: the log lines' join key to the trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def _traceresponse(span_context: trace.SpanContext) -> str:
    """W3C Trace Context Level 2's traceresponse: this server span's trace id, span id and sampled flag."""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def _version() -> str:
    try:
        return metadata.version("webapp")
    except metadata.PackageNotFoundError:
        return "unknown"
