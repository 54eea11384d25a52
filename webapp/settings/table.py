"""Every environment variable the service reads, one row each: the loaders, `--help`, the README's table
and `.env.example` all come from here (`webapp settings --markdown | --env-example`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
