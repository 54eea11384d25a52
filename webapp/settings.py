"""Configuration: read once from the environment, validated at startup, then frozen."""

from __future__ import annotations

import contextlib
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
    )
    problems = env.problems()
    if not problems and values["db_pool_min"] > values["db_pool_max"]:
        problems["DB_POOL_MIN"] = ["must not exceed DB_POOL_MAX"]
    if problems:
        raise ConfigError(problems)
    return Config(**values)
