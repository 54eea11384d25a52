"""create_app: the composition root. Read it top to bottom to see the whole dependency graph."""

from __future__ import annotations

import logging

from flask import Flask

from webapp import pipeline
from webapp.blueprints.health import health_blueprint
from webapp.blueprints.meta import meta_blueprint
from webapp.blueprints.metrics import metrics_blueprint
from webapp.blueprints.orders import orders_blueprint
from webapp.blueprints.products import products_blueprint
from webapp.blueprints.users import users_blueprint
from webapp.cache import cache_from_config
from webapp.config import Config, load_config
from webapp.converters import IdConverter
from webapp.db import Database, database_breaker
from webapp.http import errors_to_http
from webapp.json_provider import OrjsonProvider
from webapp.metrics import Metrics
from webapp.observability import configure_logging
from webapp.repositories import IdempotencyRepository, OrderRepository, ProductRepository, UserRepository
from webapp.services import OrderService, ProductService, UserService
from webapp.services.health import HealthService
from webapp.services.ports import UserCache
from webapp.unit_of_work import PostgresUnitOfWork

__all__ = ["create_app"]


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
    config = config or load_config()
    configure_logging(config.log_level, log_format=config.log_format)
    metrics = metrics or Metrics(config.metrics_multiproc_dir)

    # 2. Infrastructure: the Postgres pool (its breaker fails fast while Postgres is silent or
    #    gone), and the optional Redis cache behind a breaker of its own.
    database = database or Database(
        config.database_url,
        min_size=config.db_pool_min,
        max_size=config.db_pool_max,
        timeout=config.db_pool_timeout,
        max_waiting=config.db_pool_max_waiting,
        prepared_statements=config.db_prepared_statements,
        breaker=database_breaker(reset_after=config.db_breaker_reset_after, on_transition=metrics.breaker_moved),
        trial_timeout=config.health_timeout,  # a breaker's trial waits no longer than a readiness check
    )
    database.open()
    metrics.watch_pool(database.stats)
    cache = cache or cache_from_config(config, on_breaker_transition=metrics.breaker_moved)

    # 3. The unit of work (one transaction, bounded by the request's deadline) and the
    #    repositories that run their SQL in it.
    uow = PostgresUnitOfWork(database, deadline=pipeline.current_deadline)
    users = UserRepository(uow.current)
    products = ProductRepository(uow.current)
    orders = OrderRepository(uow.current)
    idempotency_keys = IdempotencyRepository(uow.current)

    # 4. Services: business rules, given exactly what they use.
    user_service = UserService(uow, users, orders, cache)
    product_service = ProductService(uow, products)
    order_service = OrderService(
        uow, users, products, orders, idempotency_keys,
        deadline=pipeline.current_deadline, retention_hours=config.idempotency_retention_hours,
    )
    health = HealthService(
        required={"database": database.ping}, optional={"cache": cache.health_check}, timeout=config.health_timeout,
    )

    # 5. The Flask app and its request pipeline, outermost step first.
    app = pipeline.PipelineFlask("webapp")
    app.json = OrjsonProvider(app)  # Flask's documented slot for the JSON provider
    # Flask refuses a body over this with 413 before reading a byte of it (a chunked one as it
    # grows); under gunicorn the worker has already refused it (workers.py, the same limit).
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.url_map.converters["id"] = IdConverter
    app.use(
        pipeline.request_id(),
        pipeline.deadline(config.request_timeout),
        pipeline.log_and_measure(metrics, logging.getLogger("webapp.http")),
        errors_to_http,
    )

    # 6. Blueprints, each handed its service: parse, call, render.
    app.register_blueprint(health_blueprint(health))
    app.register_blueprint(metrics_blueprint(metrics, config.metrics_token))
    app.register_blueprint(meta_blueprint())
    app.register_blueprint(users_blueprint(user_service))
    app.register_blueprint(products_blueprint(product_service))
    app.register_blueprint(orders_blueprint(order_service))

    # For gunicorn's hooks (close the pool on exit, readiness 503 on SIGTERM) and for tests.
    app.extensions["webapp"] = {"config": config, "database": database, "health": health, "metrics": metrics}
    logging.getLogger(__name__).info("app created", extra={"cache": config.redis_url is not None})
    return app
