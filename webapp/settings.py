"""Configuration: read once from the environment, validated at startup, then frozen."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import click
import dotenv
import environs
import psycopg
from marshmallow import ValidationError
from marshmallow.fields import Boolean
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


REQUIRED: Any = ...  # a Setting's default when it has none


@dataclass(frozen=True)
class Setting:
    """One environment variable: how it is parsed, its default, what it means, and who reads it.

    kind is the MappingEnv method that parses it; reader is "app" (load_config), "server"
    (load_server_settings), "both", or "entry" (an entry point or gunicorn itself, never parsed here;
    webapp/gunicorn/settings.py also reads PROMETHEUS_MULTIPROC_DIR, an app setting, to pick its default).
    shown is the default as documented when the code computes it.
    """

    name: str
    kind: str
    default: Any
    meaning: str
    reader: str = "app"
    shown: str | None = None

    @property
    def documented_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.default is REQUIRED:
            return "**required**"
        if self.default is None:
            return "unset"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


# The one table of every variable the service reads: load_config and load_server_settings take
# their defaults from it; `webapp <command> --help`, `webapp settings --markdown` (README) and
# `--env-example` (.env.example) are generated from it; tests/unit/test_settings_table.py fails
# when a variable is read without a row here.
SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "database_url", REQUIRED,
            "`postgres://`, `postgresql://`, or the unix-socket form `postgresql://postgres:@/postgres?host=/path`; "
            "percent-encode reserved characters in the password (`@` as `%40`, `/` as `%2F`, `%` as `%25`). "
            "Straight to Postgres or through a transaction-mode pooler (PgBouncer): both are safe by default. "
            "`webapp dev` starts an embedded Postgres without it"),
    Setting("LOG_LEVEL", "str", "info", "`debug`, `info`, `warning` or `error`: the app's level and gunicorn's",
            reader="both"),
    Setting("LOG_FORMAT", "str", "json",
            "`json` (one object per line, for a log store) or `console` (readable lines at a terminal)",
            reader="both"),
    Setting("REQUEST_TIMEOUT", "float", 10.0,
            "seconds; each request's deadline (> 0, ≤ 300). It bounds the pool wait, every statement on the server "
            "(`SET LOCAL statement_timeout` with each `BEGIN`), every wait on the client (the watchdog cuts a silent "
            "server at deadline + 0.5 s) and retry sleeps. A client may ask for less with "
            "`X-Request-Timeout: <seconds>`"),
    Setting("DB_POOL_MIN", "int", 1, "connections per worker kept open (≤ `DB_POOL_MAX`)"),
    Setting("DB_POOL_MAX", "int", 2,
            "connections per worker: a sync worker runs one request at a time, plus one for a concurrent health check"),
    Setting("DB_POOL_TIMEOUT", "float", 2.0, "max seconds to wait for a free connection (then 503)"),
    Setting("DB_POOL_MAX_WAITING", "int", 32, "max requests queued for a connection (the next one gets 503 at once)"),
    Setting("DB_PREPARED_STATEMENTS", "auto_or_bool", "auto",
            "server-side prepared statements (psycopg's `prepare_threshold` 5). `auto`: on for a connection that "
            "reaches Postgres itself, off through a pooler, found out per connection; `true`/`false` force it "
            "(`true` never through PgBouncer < 1.21)"),
    Setting("DB_BREAKER_RESET_AFTER", "float", 1.0,
            "seconds the database breaker stays open after a connection failed or went silent, before one trial "
            "call (which waits at most `HEALTH_TIMEOUT`)"),
    Setting("REDIS_URL", "redis_url", None, "enables the user cache (`redis://`, `rediss://`, `unix://`)"),
    Setting("CACHE_TTL", "int", 300, "seconds a cached user lives"),
    Setting("CACHE_SOCKET_TIMEOUT", "float", 0.05, "Redis connect/read timeout in seconds"),
    Setting("HEALTH_TIMEOUT", "float", 1.0, "per-check timeout of `/readyz` and `/healthz` in seconds (≤ 2)"),
    Setting("BREAKER_THRESHOLD", "int", 5, "consecutive failures that open the cache breaker"),
    Setting("BREAKER_RESET_AFTER", "float", 5.0, "seconds the cache breaker stays open before a trial call"),
    Setting("METRICS_TOKEN", "str", None,
            "when set, `/metrics` needs `Authorization: Bearer <token>`; unset: loopback callers only, and never "
            "a request that came through a proxy"),
    Setting("PROMETHEUS_MULTIPROC_DIR", "str", None,
            "where gunicorn's workers share metrics; under `webapp serve` a fresh `/dev/shm/webapp-metrics-<master "
            "pid>` by default, wiped at start and removed at exit. Keep it on tmpfs: it is written on every request",
            shown="a fresh folder per master"),
    Setting("MAX_BODY_BYTES", "int", 64 * 1024,
            "larger bodies are refused with 413 (from `Content-Length`, or while a chunked body is read)"),
    Setting("IDEMPOTENCY_RETENTION_HOURS", "int", 24, "how long an `Idempotency-Key` replays the order it placed"),
    # `webapp migrate` (docs/operations.md, "Releasing").
    Setting("MIGRATION_LOCK_TIMEOUT", "float", 2.0,
            "`webapp migrate`: seconds a statement may wait for a lock before it is cancelled and its file rolled "
            "back and retried (a waiting `ALTER` queues every later request on its table)"),
    Setting("MIGRATION_ATTEMPTS", "int", 5,
            "`webapp migrate`: tries per file when a lock was not granted in time, with jittered backoff; then "
            "the release fails, naming the lock and who held it"),
    Setting("MIGRATION_STATEMENT_TIMEOUT", "float", 300.0, "`webapp migrate`: seconds one statement may run"),
    # OpenTelemetry's own variables (docs/operations.md, "Tracing"); tracing is off without an endpoint.
    Setting("OTEL_EXPORTER_OTLP_ENDPOINT", "str", None,
            "OTLP/HTTP collector base URL (`/v1/traces` is appended); unset: tracing off. Needs the `[tracing]` extra"),
    Setting("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "str", None,
            "the traces URL itself, used as it is (wins over the above)"),
    Setting("OTEL_SERVICE_NAME", "str", "webapp", "the service name on every span"),
    Setting("OTEL_TRACES_SAMPLER", "str", "parentbased_always_on",
            "`always_on`, `always_off`, `traceidratio`, `parentbased_*`: which requests are traced"),
    Setting("OTEL_TRACES_SAMPLER_ARG", "float", 1.0, "the ratio for the `*traceidratio` samplers (0 to 1)"),
    Setting("OTEL_SDK_DISABLED", "bool", False, "`true`: tracing off whatever else is set"),
    Setting("OTEL_BSP_MAX_QUEUE_SIZE", "int", 2048,
            "spans waiting for export per worker; past it spans are dropped (counted in `/metrics`), never waited for"),
    Setting("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "int", 512, "spans per export (≤ the queue size)"),
    Setting("OTEL_BSP_SCHEDULE_DELAY", "int", 5000, "milliseconds between exports"),
    Setting("OTEL_EXPORTER_OTLP_TIMEOUT", "int", 10_000,
            "milliseconds an export may take (then its spans are dropped)"),
    Setting("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "int", None, "the same for traces only (wins over the above)",
            shown="`OTEL_EXPORTER_OTLP_TIMEOUT`"),
    Setting("OTEL_EXPORTER_OTLP_PROTOCOL", "str", "http/protobuf", "only `http/protobuf` (the extra's exporter)"),
    Setting("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "str", None, "the same for traces only",
            shown="`OTEL_EXPORTER_OTLP_PROTOCOL`"),
    # gunicorn's, read by webapp.gunicorn.settings (webapp/gunicorn/server_settings.py); docs/operations.md says why.
    Setting("PORT", "int", 8000, "port gunicorn binds", reader="server"),
    Setting("BIND_HOST", "str", "0.0.0.0",
            "address gunicorn binds: all interfaces, as a platform's router needs; `webapp dev` binds 127.0.0.1",
            reader="server"),
    Setting("WEB_CONCURRENCY", "int", None,
            "sync worker processes, each with its own pool of `DB_POOL_MAX` connections; usable CPUs are counted "
            "from the cgroup CPU quota. `webapp dev` starts 2", reader="server", shown="2 × usable CPUs + 1"),
    Setting("GUNICORN_TIMEOUT", "int", 15,
            "seconds a request may run before its worker is aborted (JSON 504); above `REQUEST_TIMEOUT`",
            reader="server"),
    Setting("GUNICORN_GRACEFUL_TIMEOUT", "int", 20,
            "seconds a stop waits for requests in flight before SIGKILL; ≥ `GUNICORN_TIMEOUT`", reader="server"),
    Setting("SHUTDOWN_DRAIN_SECONDS", "float", 1.0,
            "seconds to keep serving after SIGTERM while `/readyz` already says 503 (0–10)", reader="server"),
    Setting("CLIENT_READ_TIMEOUT", "float", None,
            "seconds a request's headers and body may take to arrive after accept, else a JSON 408 (a slow client "
            "holds a sync worker); below `GUNICORN_TIMEOUT`", reader="server",
            shown="5 (at most half of `GUNICORN_TIMEOUT`)"),
    Setting("PRESTOP_SECONDS", "float", 0.0,
            "a Kubernetes preStop delay before the SIGTERM, inside the same grace period: counted in the stop window",
            reader="server"),
    Setting("STOP_WINDOW_SECONDS", "float", 30.0,
            "seconds the platform waits between SIGTERM (or the preStop hook) and SIGKILL: Heroku's 30 s, "
            "Kubernetes' `terminationGracePeriodSeconds`", reader="server"),
    Setting("GUNICORN_BACKLOG", "int", 256, "listen backlog: connections the kernel queues for the workers",
            reader="server"),
    Setting("GUNICORN_MAX_REQUESTS", "int", 0,
            "recycle a worker after this many requests (plus up to 10 % jitter); 0: never", reader="server"),
    # Read by an entry point or by gunicorn itself, never parsed into a Config.
    Setting("GUNICORN_CMD_ARGS", "str", None,
            "extra gunicorn arguments, read by gunicorn itself; `-c python:webapp.gunicorn.settings` gives a bare "
            "`gunicorn` command this service's settings", reader="entry"),
    Setting("FLASK_SKIP_DOTENV", "str", None,
            "`1`: no entry point reads `.env` (by default `webapp`, gunicorn with our settings and `flask` read "
            "the nearest one upwards; variables already set win)", reader="entry"),
)
SETTING = {setting.name: setting for setting in SETTINGS}


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


# key=value DSNs and URL query strings: password=..., a quoted value (with \' escapes) or up to & or a space.
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&'\"]+)", re.IGNORECASE)
# In free text a URL, or a host libpq misread, is a word: it ends at whitespace or a quote.
_WORD_WITH_AT = re.compile(r"[^\s'\"<>]*@[^\s'\"<>]*")
_ANY_SECRET = re.compile(r"@|password", re.IGNORECASE)


def mask_url(url: str | None) -> str:
    """Return a URL or key=value DSN with any password replaced by ***, safe for logs and messages."""
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + _mask_user_info(rest) if sep else _PASSWORD_PARAM.sub(r"\1***", url)


def mask_secrets(text: str) -> str:
    """Return free text (a driver's message, a log line) with every password in it masked.

    URLs and key=value DSNs as mask_url masks them, and any other word with an @ up to its last @:
    libpq reads the tail of a password with an unescaped @ as the host, and quotes that host in
    its errors ("failed to resolve host 'ss@w0rd@127.0.0.1'").
    """
    if not _ANY_SECRET.search(text):  # the common case, and cheap
        return text
    return _WORD_WITH_AT.sub(_mask_word, _PASSWORD_PARAM.sub(r"\1***", text))


def _mask_word(match: re.Match[str]) -> str:
    scheme, sep, rest = match[0].partition("://")
    return scheme + sep + _mask_user_info(rest) if sep else "***" + match[0][match[0].rfind("@"):]


def _mask_user_info(rest: str) -> str:
    """What follows a URL's ://, masked from the user's first : up to the LAST @.

    Trap: a password may hold @ / ? # : unescaped. libpq ends the user info at the first @ and
    reads the rest as the host, so masking up to the first @ leaks the password's tail; masking up
    to the last @ hides too much only when the query string holds an @: the safe side.
    """
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            user += ":***"
        elif "/" in user or "@" in user:  # no password, but not a plain user name either
            user = "***"
        rest = user + rest[at:]
    return _PASSWORD_PARAM.sub(r"\1***", rest)


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
        self.add_parser("database_url", _database_url)
        self.add_parser("redis_url", _redis_url)
        self.add_parser("auto_or_bool", _auto_or_bool)

    def setting(self, name: str, default: Any = REQUIRED, **kwargs: Any) -> Any:
        """The variable parsed as its row in SETTINGS says, with the row's default unless one is given."""
        row = SETTING[name]
        default = row.default if default is REQUIRED else default
        return getattr(self, row.kind)(name, **kwargs) if default is REQUIRED else \
            getattr(self, row.kind)(name, default, **kwargs)

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
    return variables_read(load_config)


def variables_read(load: Callable[[Mapping[str, str]], object]) -> list[str]:
    """The name of every variable load(environ) asks its environ for, in order (an empty environ)."""
    asked: list[str] = []

    class Recorder(dict[str, str]):
        def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
            asked.append(key)
            return default

    with contextlib.suppress(ConfigError):  # DATABASE_URL is missing, of course
        load(Recorder())
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
        parsed = conninfo_to_dict(value)
    except psycopg.ProgrammingError:  # never `from exc`: libpq's message quotes the password
        # Else the URL fails later, in migrate or the pool, with the raw token in the message.
        raise environs.EnvError(f"libpq cannot parse this URL: {_PERCENT_ENCODE}") from None
    if _misread_user_info(value, parsed):
        # libpq accepts it, reads part of the password as the host or port, and quotes that in
        # every connection error: refused here, before anything can print it.
        raise environs.EnvError(f"libpq would read part of the password as the host: {_PERCENT_ENCODE}")
    if scheme == "postgres":  # libpq accepts both; normalise so logs look the same
        value = "postgresql" + value[len("postgres") :]
    return value


_PERCENT_ENCODE = "percent-encode reserved characters in the user and password (% as %25, @ as %40, / as %2F, : as %3A)"


def _misread_user_info(url: str, parsed: dict[str, Any]) -> bool:
    """True when the URL has an unescaped @ or / in its user info, which libpq silently misreads.

    libpq ends the user info at the first @ (none if a / comes first): `u:p@ss@db` connects to
    host `ss@db`, `u:p/ss@db` to host `u`, port `p`. No host or port legitimately holds such text.
    """
    head = url.partition("://")[2].partition("?")[0]
    before_last_at = head[: head.rfind("@")] if "@" in head else ""
    hosts, ports = str(parsed.get("host") or ""), str(parsed.get("port") or "")
    return ("@" in before_last_at or "/" in before_last_at or "@" in hosts
            or any(not port.isdigit() for port in ports.split(",") if port))


def _redis_url(value: str | None) -> str | None:
    """Accept redis://, rediss:// and unix:// URLs; unset or empty disables the cache."""
    if not value:
        return None
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise environs.EnvError("must be a redis://, rediss:// or unix:// URL")
    return value


def _auto_or_bool(value: str) -> bool | None:
    """None for "auto" (the code decides), else the value read as environs reads a boolean."""
    if value.strip().lower() == "auto":
        return None
    try:
        return bool(Boolean().deserialize(value))
    except ValidationError:
        raise environs.EnvError("must be auto, true or false") from None


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from environ (default os.environ), or raise ConfigError naming every problem."""
    env = MappingEnv(os.environ if environ is None else environ)
    positive = Range(min=0, min_inclusive=False)
    values: dict[str, Any] = dict(
        database_url=env.setting("DATABASE_URL"),
        log_level=env.setting("LOG_LEVEL", validate=OneOf(LOG_LEVELS)),
        log_format=env.setting("LOG_FORMAT", validate=OneOf(LOG_FORMATS)),
        request_timeout=env.setting("REQUEST_TIMEOUT", validate=Range(0, 300, min_inclusive=False)),
        db_pool_min=env.setting("DB_POOL_MIN", validate=Range(0, 1000)),
        db_pool_max=env.setting("DB_POOL_MAX", validate=Range(1, 1000)),
        db_pool_timeout=env.setting("DB_POOL_TIMEOUT", validate=positive),
        db_pool_max_waiting=env.setting("DB_POOL_MAX_WAITING", validate=Range(1, 10_000)),
        db_prepared_statements=env.setting("DB_PREPARED_STATEMENTS"),
        db_breaker_reset_after=env.setting("DB_BREAKER_RESET_AFTER", validate=Range(0, 60)),
        redis_url=env.setting("REDIS_URL"),
        cache_ttl=env.setting("CACHE_TTL", validate=Range(1, 86_400)),
        cache_socket_timeout=env.setting("CACHE_SOCKET_TIMEOUT", validate=Range(0, 5, min_inclusive=False)),
        health_timeout=env.setting("HEALTH_TIMEOUT", validate=Range(0, 2, min_inclusive=False)),
        breaker_threshold=env.setting("BREAKER_THRESHOLD", validate=Range(1, 1000)),
        breaker_reset_after=env.setting("BREAKER_RESET_AFTER", validate=positive),
        metrics_token=env.setting("METRICS_TOKEN") or None,
        metrics_multiproc_dir=env.setting("PROMETHEUS_MULTIPROC_DIR") or None,
        max_body_bytes=env.setting("MAX_BODY_BYTES", validate=Range(1024, 10 * 1024 * 1024)),
        idempotency_retention_hours=env.setting("IDEMPOTENCY_RETENTION_HOURS", validate=Range(1, 24 * 30)),
        migration_lock_timeout=env.setting("MIGRATION_LOCK_TIMEOUT", validate=Range(0, 60, min_inclusive=False)),
        migration_attempts=env.setting("MIGRATION_ATTEMPTS", validate=Range(1, 100)),
        migration_statement_timeout=env.setting("MIGRATION_STATEMENT_TIMEOUT", validate=positive),
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
