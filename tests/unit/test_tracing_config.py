"""Tracing is configured the OpenTelemetry way (the standard OTEL_* variables), validated at start like every
other setting, and off unless an OTLP endpoint is set."""

from __future__ import annotations

import pytest

from webapp.observability.tracing import sampler_for
from webapp.settings import ConfigError, TracingSettings, load_config

BASE = {"DATABASE_URL": "postgresql://app@db.internal/app"}


def tracing(**env: str) -> TracingSettings | None:
    return load_config({**BASE, **env}).tracing


def endpoint(**env: str) -> str:
    settings = tracing(**env)
    assert settings is not None
    return settings.endpoint


def problems(**env: str) -> dict[str, list[str]]:
    with pytest.raises(ConfigError) as caught:
        load_config({**BASE, **env})
    return caught.value.problems


def test_tracing_is_off_without_an_endpoint_whatever_else_is_set():
    assert tracing() is None
    assert tracing(OTEL_SERVICE_NAME="users", OTEL_TRACES_SAMPLER="always_on") is None


def test_the_base_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_used_as_it_is():
    assert endpoint(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/") == "http://collector:4318/v1/traces"
    assert endpoint(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318",
                    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="https://gw.example/otlp/traces") == (
        "https://gw.example/otlp/traces")


def test_otel_sdk_disabled_turns_tracing_off_even_with_an_endpoint():
    assert tracing(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318", OTEL_SDK_DISABLED="true") is None


def test_the_defaults_are_the_specifications_and_the_timeout_is_read_in_milliseconds():
    settings = tracing(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318", OTEL_EXPORTER_OTLP_TIMEOUT="2500")
    assert settings == TracingSettings("http://collector:4318/v1/traces", export_timeout_ms=2500)


def test_every_bad_tracing_variable_is_named_at_start():
    found = problems(OTEL_EXPORTER_OTLP_ENDPOINT="grpc://collector:4317", OTEL_TRACES_SAMPLER="sometimes",
                     OTEL_TRACES_SAMPLER_ARG="2", OTEL_BSP_MAX_QUEUE_SIZE="0")
    assert set(found) == {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
                          "OTEL_BSP_MAX_QUEUE_SIZE"}


def test_only_otlp_over_http_is_accepted_and_a_batch_must_fit_the_queue():
    found = problems(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318", OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                     OTEL_BSP_MAX_QUEUE_SIZE="100", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="512")
    assert set(found) == {"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"}


@pytest.mark.parametrize(("name", "ratio", "described"), [
    ("parentbased_always_on", 1.0, "ParentBased{root:AlwaysOnSampler,"),
    ("always_off", 1.0, "AlwaysOffSampler"),
    ("traceidratio", 0.1, "TraceIdRatioBased{0.1}"),
    ("parentbased_traceidratio", 0.0, "ParentBased{root:TraceIdRatioBased{0.0},"),
])
def test_the_sampler_is_the_one_otel_traces_sampler_names_with_its_ratio(name, ratio, described):
    assert sampler_for(name, ratio).get_description().startswith(described)
