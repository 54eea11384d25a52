"""OpenTelemetry's standard OTEL_* variables, validated like every other setting; tracing is off without
an endpoint."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import environs
from marshmallow.validate import OneOf, Range

from webapp.settings.table import SETTING

TRACES_SAMPLERS = (
    "always_on", "always_off", "traceidratio",
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
)


@dataclass(frozen=True)
class TracingSettings:
    """Where and how spans are exported (webapp/observability/tracing.py builds the provider from it)."""

    endpoint: str  # the full OTLP/HTTP traces URL, .../v1/traces
    service_name: str = "webapp"
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    schedule_delay_ms: int = 5000
    export_timeout_ms: int = 10_000


def _otlp_url(value: str | None) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise environs.EnvError("must be an http:// or https:// URL (OTLP over HTTP)")
    return value


def tracing_values(env: environs.Env) -> dict[str, Any] | None:
    """The OTEL_* variables; None when OTEL_SDK_DISABLED is true (every OTEL_* variable is then ignored)."""
    if env.bool("OTEL_SDK_DISABLED", SETTING["OTEL_SDK_DISABLED"].default):
        return None
    env.add_parser("otlp_url", _otlp_url)
    traces_endpoint = env.otlp_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)  # used as it is
    base_endpoint = env.otlp_url("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # the signal's path is appended
    milliseconds = Range(1, 600_000)

    def read(name: str, default: Any = None, **kwargs: Any) -> Any:
        """The variable parsed as its kind in the settings table, its default the table's unless given."""
        row = SETTING[name]
        return getattr(env, row.kind)(name, row.default if default is None else default, **kwargs)

    return dict(
        endpoint=traces_endpoint or (base_endpoint and base_endpoint.rstrip("/") + "/v1/traces"),
        service_name=read("OTEL_SERVICE_NAME") or SETTING["OTEL_SERVICE_NAME"].default,
        sampler=read("OTEL_TRACES_SAMPLER", validate=OneOf(TRACES_SAMPLERS)),
        sampler_arg=read("OTEL_TRACES_SAMPLER_ARG", validate=Range(0, 1)),
        max_queue_size=read("OTEL_BSP_MAX_QUEUE_SIZE", validate=Range(1, 1_000_000)),
        max_export_batch_size=read("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", validate=Range(1, 1_000_000)),
        schedule_delay_ms=read("OTEL_BSP_SCHEDULE_DELAY", validate=milliseconds),
        # Milliseconds, as the specification says. Trap: the Python exporter reads these variables
        # as seconds (10000 would be a wait of hours); the value is handed to it converted instead.
        export_timeout_ms=read("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                               read("OTEL_EXPORTER_OTLP_TIMEOUT", validate=milliseconds), validate=milliseconds),
        protocol=read("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", read("OTEL_EXPORTER_OTLP_PROTOCOL")),
    )


def tracing_problems(values: dict[str, Any]) -> dict[str, list[str]]:
    """Rules across variables; pops `protocol`, which is checked, not kept."""
    problems: dict[str, list[str]] = {}
    if values.pop("protocol") != "http/protobuf":
        problems["OTEL_EXPORTER_OTLP_PROTOCOL"] = ["only http/protobuf is supported (the [tracing] extra's exporter)"]
    if values["max_export_batch_size"] > values["max_queue_size"]:
        problems["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = ["must not exceed OTEL_BSP_MAX_QUEUE_SIZE"]
    missing = [name for name in TRACING_MODULES if not _installed(name)] if values["endpoint"] else []
    if missing:  # else every worker would fail in create_app, after the fork
        problems["OTEL_EXPORTER_OTLP_ENDPOINT"] = [
            f"tracing needs the [tracing] extra (pip install 'webapp[tracing]'); missing: {', '.join(missing)}"]
    return problems


# What webapp/observability/tracing.py imports: looked up (not imported) when an endpoint is set.
TRACING_MODULES = (
    "opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.instrumentation.psycopg", "opentelemetry.instrumentation.redis",
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
