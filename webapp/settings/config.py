"""Config and load_config: read once from the environment, validated at startup, then frozen; the .env rule."""

from __future__ import annotations

import contextlib
import os
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

from webapp.settings.masking import mask_url
from webapp.settings.table import REQUIRED, SETTING
from webapp.settings.tracing import TracingSettings, tracing_problems, tracing_values

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
    tracing = tracing_values(env)
    problems = env.problems()
    if not problems and values["db_pool_min"] > values["db_pool_max"]:
        problems["DB_POOL_MIN"] = ["must not exceed DB_POOL_MAX"]
    if not problems and tracing is not None:
        problems.update(tracing_problems(tracing))
        values["tracing"] = TracingSettings(**tracing) if tracing["endpoint"] else None
    if problems:
        raise ConfigError(problems)
    return Config(**values)


