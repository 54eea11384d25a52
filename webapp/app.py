"""create_app: the composition root. Read it top to bottom to see the whole dependency graph."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from flask import Flask

from webapp.cache.users import cache_from_config
from webapp.observability.logs import configure_logging
from webapp.observability.metrics import Metrics
from webapp.postgres.database import Database, database_breaker
from webapp.postgres.unit_of_work import UnitOfWork
from webapp.services.catalogue import ProductService
from webapp.services.health import HealthService
from webapp.services.orders import OrderService
from webapp.services.ports import UserCache
from webapp.services.users import UserService
from webapp.settings import GUNICORN_SETTINGS_MARKER, LOG_FORMATS, Config, ConfigError, load_config
from webapp.web import pipeline
from webapp.web.blueprints.health import health_blueprint
from webapp.web.blueprints.meta import meta_blueprint
from webapp.web.blueprints.metrics import metrics_blueprint
from webapp.web.blueprints.orders import orders_blueprint
from webapp.web.blueprints.products import products_blueprint
from webapp.web.blueprints.users import users_blueprint
from webapp.web.errors import errors_to_http
from webapp.web.parsing import IdConverter
from webapp.web.rendering import OrjsonProvider

if TYPE_CHECKING:  # the [tracing] extra may be absent: imported by start_tracing only when tracing is on
    from webapp.observability.tracing import Tracing


def create_app(
    config: Config | None = None,
    *,
    database: Database | None = None,
    cache: UserCache | None = None,
    metrics: Metrics | None = None,
) -> Flask:
    """Build the app: every dependency is made here and handed down (tests may pass their own).

    Gunicorn calls this in each worker after fork (no preload_app), so nothing here waits on
    the network: the pool connects in the background, the cache on first use.
    """
    # 1. Configuration: validated once, then frozen. Logging and metrics before anything logs.
    config = config or _load_config_or_refuse_to_boot(os.environ)
    configure_logging(config.log_level, log_format=config.log_format)
    warn_if_served_without_settings(os.environ)
    metrics = metrics or Metrics(config.metrics_multiproc_dir)
    tracing = start_tracing(config, metrics)

    # 2. Infrastructure: the Postgres pool (its breaker fails fast while Postgres is silent or
    #    gone), and the optional Redis cache behind a breaker of its own.
    metrics.breaker_moved("database", "closed", "closed")  # the gauge exists from the start, before any move
    database = database or Database(
        config.database_url,
        min_size=config.db_pool_min,
        max_size=config.db_pool_max,
        timeout=config.db_pool_timeout,
        max_waiting=config.db_pool_max_waiting,
        prepared_statements=config.db_prepared_statements,
        breaker=database_breaker(reset_after=config.db_breaker_reset_after, on_transition=metrics.breaker_moved),
        trial_timeout=config.health_timeout,  # a breaker's trial waits no longer than a readiness check
        on_connect=tracing.instrument_connection if tracing else None,
    )
    database.open()
    metrics.watch_pool(database.stats)
    cache = cache or cache_from_config(config, on_breaker_transition=metrics.breaker_moved,
                                       instrument=tracing.instrument_redis if tracing else None)

    # 3. The unit of work: each transaction bounded by the deadline of the request in flight,
    #    its repositories as attributes (`with uow.begin() as tx: tx.users.get(...)`).
    uow = UnitOfWork(database, deadline=pipeline.current_deadline, trace=tracing.transaction if tracing else None)

    # 4. Services: business rules, given exactly what they use.
    user_service = UserService(uow, cache)
    product_service = ProductService(uow)
    order_service = OrderService(
        uow, deadline=pipeline.current_deadline, retention_hours=config.idempotency_retention_hours,
    )
    health = HealthService(
        required={"database": uow.ping}, optional={"cache": cache.health_check}, timeout=config.health_timeout,
    )

    # 5. The Flask app and its request pipeline, outermost step first.
    app = pipeline.PipelineFlask("webapp")
    app.json = OrjsonProvider(app)  # Flask's documented slot for the JSON provider
    # Flask refuses a body over this with 413 before reading a byte of it (a chunked one as it
    # grows); under gunicorn the worker has already refused it (webapp/gunicorn/wire.py).
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.url_map.converters["id"] = IdConverter
    app.use(
        pipeline.request_id(),
        *([pipeline.trace(tracing)] if tracing else []),  # off: not a step at all
        pipeline.log_and_measure(metrics, logging.getLogger("webapp.http")),
        errors_to_http,
        pipeline.deadline(config.request_timeout),  # inside errors: a request queued too long is a JSON 503
    )

    # 6. Blueprints, each handed its service: parse, call, render.
    app.register_blueprint(health_blueprint(health))
    app.register_blueprint(metrics_blueprint(metrics, config.metrics_token))
    app.register_blueprint(meta_blueprint())
    app.register_blueprint(users_blueprint(user_service))
    app.register_blueprint(products_blueprint(product_service))
    app.register_blueprint(orders_blueprint(order_service))

    # For gunicorn's hooks (close the pool on exit, readiness 503 on SIGTERM) and for tests.
    app.extensions["webapp"] = {
        "config": config, "database": database, "health": health, "metrics": metrics, "tracing": tracing,
    }
    logging.getLogger(__name__).info("app created", extra={
        "cache": config.redis_url is not None, "tracing": config.tracing.endpoint if config.tracing else None,
    })
    return app


def start_tracing(config: Config, metrics: Metrics) -> Tracing | None:
    """The worker's tracer provider when an OTLP endpoint is set, else None (and OpenTelemetry never imported).

    Built here, in each gunicorn worker after its fork (preload_app is off), not in the master: a
    batch processor's export thread does not survive a fork, so one built before it exports nothing.
    """
    if config.tracing is None:
        return None
    try:
        from webapp.observability.tracing import Tracing
    except ImportError as exc:
        raise ConfigError({"OTEL_EXPORTER_OTLP_ENDPOINT": [
            f"tracing needs the [tracing] extra (pip install 'webapp[tracing]'): {exc.name} is missing"]}) from None
    return Tracing(config.tracing, on_drop=metrics.spans_dropped_by)


# gunicorn's Arbiter.WORKER_BOOT_ERROR: a worker exiting with it makes the master stop, not respawn.
WORKER_BOOT_ERROR = 3


def _load_config_or_refuse_to_boot(environ: Mapping[str, str]) -> Config:
    """load_config, but inside a gunicorn worker an invalid environment ends in one JSON line and exit 3.

    Trap: gunicorn prints a traceback for any exception in create_app, per worker, then "Worker
    failed to boot". Only a bare gunicorn gets here (our settings check the config before forking);
    elsewhere (the Flask CLI, tests) the ConfigError propagates and prints as one line.
    """
    try:
        return load_config(environ)
    except ConfigError as exc:
        if not environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
            raise
        log_format = environ.get("LOG_FORMAT", "json")
        configure_logging("info", log_format=log_format if log_format in LOG_FORMATS else "json")
        logging.getLogger("webapp.serving").error(
            "invalid configuration; not starting: %s", "; ".join(sorted(exc.problems)),
            extra={"problems": exc.problems,
                   "hint": "a bare gunicorn reads no .env: start it with `webapp serve`, or set the variables"},
        )
        raise SystemExit(WORKER_BOOT_ERROR) from None


def warn_if_served_without_settings(environ: Mapping[str, str]) -> None:
    """Log one WARNING when gunicorn serves the app without webapp.gunicorn.settings (a bare `gunicorn app`).

    gunicorn's Arbiter sets SERVER_SOFTWARE=gunicorn/<version> in its environment, which its
    workers inherit; our settings module sets GUNICORN_SETTINGS_MARKER. Without our settings the
    server still answers, so nothing else would tell the operator what it silently lacks.
    """
    if not environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/") or GUNICORN_SETTINGS_MARKER in environ:
        return
    logging.getLogger("webapp.serving").warning(
        "gunicorn is serving webapp without webapp.gunicorn.settings: start it with `webapp serve`, "
        "or `gunicorn -c python:webapp.gunicorn.settings 'webapp:create_app()'`, "
        "or set GUNICORN_CMD_ARGS='-c python:webapp.gunicorn.settings'",
        extra={"missing": [
            "draining worker (graceful SIGTERM and SIGINT, /readyz 503 while stopping)",
            "JSON lines for gunicorn's own messages",
            "/metrics summed over all workers",
            "request timeout 15 s (stock: 30 s)",
            "no control socket",
            "configuration check before the workers fork",
            "worker count from the CPU quota",
        ]},
    )
