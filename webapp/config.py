"""Configuration: read once from the environment, validated at startup, then frozen."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import environs
from marshmallow.validate import OneOf, Range

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """Every problem found in the environment, reported together."""

    def __init__(self, problems: dict[str, list[str]]):
        self.problems = problems
        lines = [f"  {name}: {'; '.join(msgs)}" for name, msgs in sorted(problems.items())]
        super().__init__("invalid configuration:\n" + "\n".join(lines))


@dataclass(frozen=True)
class Config:
    """Everything the service can be told from outside; built only by load_config."""

    database_url: str
    port: int = 8000
    log_level: str = "info"
    request_timeout: float = 10.0
    # A sync worker runs one request at a time: one connection for it, one for a concurrent
    # health check. More would hold Postgres (or PgBouncer) slots that are never used.
    db_pool_min: int = 1
    db_pool_max: int = 2
    db_pool_timeout: float = 2.0
    db_pool_max_waiting: int = 32
    db_prepared_statements: bool = False  # only straight to Postgres, never through PgBouncer < 1.21
    db_breaker_reset_after: float = 5.0
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
            f"Config(database_url={mask_url(self.database_url)!r}, port={self.port}, "
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


class _MappingEnv(environs.Env):
    """An environs Env that reads a given mapping instead of os.environ.

    Trap: environs always looks in os.environ first; tests and main(argv, environ)
    pass their own mapping, so the lookup is overridden here, in one place.
    """

    def __init__(self, environ: Mapping[str, str]):
        super().__init__(eager=False)  # eager=False: collect every error, raise once in seal()
        self._mapping = environ

    def _get_value(self, env_key: str, default: Any) -> Any:
        return self._mapping.get(env_key, default)


def _database_url(value: str) -> str:
    """Accept postgres:// and postgresql:// URLs, including the unix-socket form."""
    scheme = urlsplit(value).scheme
    if scheme not in ("postgres", "postgresql"):
        raise environs.EnvError("must be a postgres:// or postgresql:// URL")
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


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from environ (default os.environ), or raise ConfigError naming every problem."""
    env = _MappingEnv(os.environ if environ is None else environ)
    env.add_parser("database_url", _database_url)
    env.add_parser("redis_url", _redis_url)
    positive = Range(min=0, min_inclusive=False)
    values: dict[str, Any] = dict(
        database_url=env.database_url("DATABASE_URL"),
        port=env.int("PORT", 8000, validate=Range(1, 65535)),
        log_level=env.str("LOG_LEVEL", "info", validate=OneOf(LOG_LEVELS)),
        request_timeout=env.float("REQUEST_TIMEOUT", 10.0, validate=Range(0, 300, min_inclusive=False)),
        db_pool_min=env.int("DB_POOL_MIN", 1, validate=Range(0, 1000)),
        db_pool_max=env.int("DB_POOL_MAX", 2, validate=Range(1, 1000)),
        db_pool_timeout=env.float("DB_POOL_TIMEOUT", 2.0, validate=positive),
        db_pool_max_waiting=env.int("DB_POOL_MAX_WAITING", 32, validate=Range(1, 10_000)),
        db_prepared_statements=env.bool("DB_PREPARED_STATEMENTS", False),
        db_breaker_reset_after=env.float("DB_BREAKER_RESET_AFTER", 5.0, validate=Range(0, 60)),
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
    problems: dict[str, list[str]] = {}
    try:
        env.seal()
    except environs.EnvValidationError as exc:
        messages = exc.error_messages  # {"VAR": ["problem", ...]} for eager=False
        assert isinstance(messages, dict)
        problems.update({key: [str(m) for m in msgs] for key, msgs in messages.items()})
    if not problems and values["db_pool_min"] > values["db_pool_max"]:
        problems["DB_POOL_MIN"] = ["must not exceed DB_POOL_MAX"]
    if problems:
        raise ConfigError(problems)
    return Config(**values)
