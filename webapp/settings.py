"""Configuration: read once from the environment, validated at startup, then frozen."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import click
import dotenv
import environs
import psycopg
from marshmallow.validate import OneOf, Range
from psycopg.conninfo import conninfo_to_dict

LOG_LEVELS = ("debug", "info", "warning", "error")
# Set by webapp.gunicorn.settings in gunicorn's master (its workers inherit it): the app tells a
# gunicorn started without our settings by its absence, and warns (webapp/app.py).
GUNICORN_SETTINGS_MARKER = "WEBAPP_GUNICORN_SETTINGS"
LOG_FORMATS = ("json", "console")


class ConfigError(click.ClickException):
    """Every problem found in the environment, reported together on one line.

    Trap: the Flask CLI (`flask --app webapp routes`) calls create_app and prints a full traceback
    for any exception but click's own; as a ClickException this one prints as "Error: <message>".
    """

    def __init__(self, problems: dict[str, list[str]]):
        self.problems = problems
        parts = [f"{name}: {' '.join(msgs)}" for name, msgs in sorted(problems.items())]
        super().__init__("invalid configuration: " + "; ".join(parts))


@dataclass(frozen=True)
class Config:
    """Everything the service can be told from outside; built only by load_config."""

    database_url: str
    log_level: str = "info"
    log_format: str = "json"
    request_timeout: float = 10.0
    # A sync worker runs one request at a time: one connection for it, one for a concurrent
    # health check. More would hold Postgres (or PgBouncer) slots that are never used.
    db_pool_min: int = 1
    db_pool_max: int = 2
    db_pool_timeout: float = 2.0
    db_pool_max_waiting: int = 32
    # None: on for a connection that reaches Postgres directly, off through a pooler (auto-detected).
    db_prepared_statements: bool | None = None
    db_breaker_reset_after: float = 1.0
    redis_url: str | None = None
    cache_ttl: int = 300
    cache_socket_timeout: float = 0.05
    health_timeout: float = 1.0
    breaker_threshold: int = 5
    breaker_reset_after: float = 5.0
    metrics_token: str | None = None
    metrics_multiproc_dir: str | None = None
    max_body_bytes: int = 64 * 1024
    idempotency_retention_hours: int = 24
    # `webapp migrate`: how long a statement may wait for a lock (then it is cancelled, the file rolled
    # back and retried: a waiting ALTER queues every later request on its table), and run at all.
    migration_lock_timeout: float = 2.0
    migration_attempts: int = 5
    migration_statement_timeout: float = 300.0
    tracing: TracingSettings | None = None  # None: tracing off (no OTLP endpoint, or OTEL_SDK_DISABLED)

    def __repr__(self) -> str:
        # A Config ends up in tracebacks and debug logs: never show secrets there.
        return (
            f"Config(database_url={mask_url(self.database_url)!r}, "
            f"log_level={self.log_level!r}, request_timeout={self.request_timeout}, "
            f"redis_url={mask_url(self.redis_url) if self.redis_url else None!r}, "
            f"metrics_token={'***' if self.metrics_token else None})"
        )

    __str__ = __repr__


def mask_url(url: str | None) -> str:
    """Return url with any password replaced by ***, safe for logs and messages."""
    if not url:
        return ""
    # Key/value DSNs ("host=... password=...") and URLs both exist in the wild.
    url = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", url, flags=re.IGNORECASE)
    return re.sub(r"(//[^:/@?#]*:)[^@/?#]*@", r"\1***@", url)


class MappingEnv(environs.Env):
    """An environs Env that reads a given mapping instead of os.environ.

    Trap: environs always looks in os.environ first; tests and main(argv, environ)
    pass their own mapping, so the lookup is overridden here, in one place. _get_value is
    environs' internal hook (no public one exists): setup.cfg caps environs at its major, and
    test_load_config_reads_only_the_mapping_it_is_given fails if an upgrade stops calling it.
    """

    def __init__(self, environ: Mapping[str, str]):
        super().__init__(eager=False)  # eager=False: collect every error, raise once in seal()
        self._mapping = environ

    def _get_value(self, env_key: str, default: Any) -> Any:
        return self._mapping.get(env_key, default)

    def problems(self) -> dict[str, list[str]]:
        """Every variable that failed to parse or validate, with its messages (never its value)."""
        try:
            self.seal()
        except environs.EnvValidationError as exc:
            messages = exc.error_messages  # {"VAR": ["problem", ...]} for eager=False
            assert isinstance(messages, dict)
            return {key: [str(m) for m in msgs] for key, msgs in messages.items()}
        return {}


def config_variables() -> list[str]:
    """The name of every variable load_config reads, in its order (for `webapp <command> --help`)."""
    asked: list[str] = []

    class Recorder(dict[str, str]):
        def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
            asked.append(key)
            return default

    with contextlib.suppress(ConfigError):  # DATABASE_URL is missing, of course
        load_config(Recorder())
    return asked


def with_dotenv(environ: Mapping[str, str]) -> dict[str, str]:
    """environ plus the variables of a .env file it does not set: the one .env rule of every entry point.

    The same rule as the Flask CLI's (which reads .env by itself): the nearest .env from the
    working directory upwards, variables already in the environment win, FLASK_SKIP_DOTENV=1
    turns it off. So `webapp`, gunicorn with our settings and `flask` all see the same values.
    """
    if environ.get("FLASK_SKIP_DOTENV", "").lower() not in ("", "0", "false", "no"):
        return dict(environ)
    path = dotenv.find_dotenv(".env", usecwd=True)
    from_file = dotenv.dotenv_values(path, encoding="utf-8") if path else {}
    return {**{k: v for k, v in from_file.items() if v is not None}, **environ}


def _database_url(value: str) -> str:
    """Accept postgres:// and postgresql:// URLs libpq can parse, including the unix-socket form."""
    scheme = urlsplit(value).scheme
    if scheme not in ("postgres", "postgresql"):
        raise environs.EnvError("must be a postgres:// or postgresql:// URL")
    try:
        conninfo_to_dict(value)
    except psycopg.ProgrammingError:  # never `from exc`: libpq's message quotes the password
        # Else the URL fails later, in migrate or the pool, with the raw token in the message.
        raise environs.EnvError(
            "libpq cannot parse this URL: percent-encode reserved characters in the user and password "
            "(% as %25, @ as %40, / as %2F, : as %3A)"
        ) from None
    if scheme == "postgres":  # libpq accepts both; normalise so logs look the same
        value = "postgresql" + value[len("postgres") :]
    return value


def _redis_url(value: str | None) -> str | None:
    """Accept redis://, rediss:// and unix:// URLs; unset or empty disables the cache."""
    if not value:
        return None
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise environs.EnvError("must be a redis://, rediss:// or unix:// URL")
    return value


def _auto_or_bool(env: environs.Env, name: str) -> bool | None:
    """None for "auto" (the default: the code decides), else the variable read as environs' boolean."""
    if env.str(name, "auto").strip().lower() == "auto":
        return None
    return env.bool(name)


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from environ (default os.environ), or raise ConfigError naming every problem."""
    env = MappingEnv(os.environ if environ is None else environ)
    env.add_parser("database_url", _database_url)
    env.add_parser("redis_url", _redis_url)
    positive = Range(min=0, min_inclusive=False)
    values: dict[str, Any] = dict(
        database_url=env.database_url("DATABASE_URL"),
        log_level=env.str("LOG_LEVEL", "info", validate=OneOf(LOG_LEVELS)),
        log_format=env.str("LOG_FORMAT", "json", validate=OneOf(LOG_FORMATS)),
        request_timeout=env.float("REQUEST_TIMEOUT", 10.0, validate=Range(0, 300, min_inclusive=False)),
        db_pool_min=env.int("DB_POOL_MIN", 1, validate=Range(0, 1000)),
        db_pool_max=env.int("DB_POOL_MAX", 2, validate=Range(1, 1000)),
        db_pool_timeout=env.float("DB_POOL_TIMEOUT", 2.0, validate=positive),
        db_pool_max_waiting=env.int("DB_POOL_MAX_WAITING", 32, validate=Range(1, 10_000)),
        db_prepared_statements=_auto_or_bool(env, "DB_PREPARED_STATEMENTS"),
        db_breaker_reset_after=env.float("DB_BREAKER_RESET_AFTER", 1.0, validate=Range(0, 60)),
        redis_url=env.redis_url("REDIS_URL", None),
        cache_ttl=env.int("CACHE_TTL", 300, validate=Range(1, 86_400)),
        cache_socket_timeout=env.float("CACHE_SOCKET_TIMEOUT", 0.05, validate=Range(0, 5, min_inclusive=False)),
        health_timeout=env.float("HEALTH_TIMEOUT", 1.0, validate=Range(0, 2, min_inclusive=False)),
        breaker_threshold=env.int("BREAKER_THRESHOLD", 5, validate=Range(1, 1000)),
        breaker_reset_after=env.float("BREAKER_RESET_AFTER", 5.0, validate=positive),
        metrics_token=env.str("METRICS_TOKEN", None) or None,
        metrics_multiproc_dir=env.str("PROMETHEUS_MULTIPROC_DIR", None) or None,
        max_body_bytes=env.int("MAX_BODY_BYTES", 64 * 1024, validate=Range(1024, 10 * 1024 * 1024)),
        idempotency_retention_hours=env.int("IDEMPOTENCY_RETENTION_HOURS", 24, validate=Range(1, 24 * 30)),
        migration_lock_timeout=env.float("MIGRATION_LOCK_TIMEOUT", 2.0, validate=Range(0, 60, min_inclusive=False)),
        migration_attempts=env.int("MIGRATION_ATTEMPTS", 5, validate=Range(1, 100)),
        migration_statement_timeout=env.float("MIGRATION_STATEMENT_TIMEOUT", 300.0, validate=positive),
    )
    tracing = _tracing_values(env)
    problems = env.problems()
    if not problems and values["db_pool_min"] > values["db_pool_max"]:
        problems["DB_POOL_MIN"] = ["must not exceed DB_POOL_MAX"]
    if not problems and tracing is not None:
        problems.update(_tracing_problems(tracing))
        values["tracing"] = TracingSettings(**tracing) if tracing["endpoint"] else None
    if problems:
        raise ConfigError(problems)
    return Config(**values)


# --- Tracing (OpenTelemetry): the standard OTEL_* variables, validated like the rest -------------

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


def _tracing_values(env: environs.Env) -> dict[str, Any] | None:
    """The OTEL_* variables; None when OTEL_SDK_DISABLED is true (every OTEL_* variable is then ignored)."""
    if env.bool("OTEL_SDK_DISABLED", False):
        return None
    env.add_parser("otlp_url", _otlp_url)
    traces_endpoint = env.otlp_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)  # used as it is
    base_endpoint = env.otlp_url("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # the signal's path is appended
    milliseconds = Range(1, 600_000)
    return dict(
        endpoint=traces_endpoint or (base_endpoint and base_endpoint.rstrip("/") + "/v1/traces"),
        service_name=env.str("OTEL_SERVICE_NAME", "webapp") or "webapp",
        sampler=env.str("OTEL_TRACES_SAMPLER", "parentbased_always_on", validate=OneOf(TRACES_SAMPLERS)),
        sampler_arg=env.float("OTEL_TRACES_SAMPLER_ARG", 1.0, validate=Range(0, 1)),
        max_queue_size=env.int("OTEL_BSP_MAX_QUEUE_SIZE", 2048, validate=Range(1, 1_000_000)),
        max_export_batch_size=env.int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, validate=Range(1, 1_000_000)),
        schedule_delay_ms=env.int("OTEL_BSP_SCHEDULE_DELAY", 5000, validate=milliseconds),
        # Milliseconds, as the specification says. Trap: the Python exporter reads these variables
        # as seconds (10000 would be a wait of hours); the value is handed to it converted instead.
        export_timeout_ms=env.int(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", env.int("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000, validate=milliseconds),
            validate=milliseconds,
        ),
        protocol=env.str("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.str("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")),
    )


def _tracing_problems(values: dict[str, Any]) -> dict[str, list[str]]:
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
