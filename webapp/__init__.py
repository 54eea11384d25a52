"""create_app: the composition root. Read it top to bottom to see the whole dependency graph."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from webapp import http
from webapp.blueprints.health import health_blueprint
from webapp.blueprints.meta import meta_blueprint
from webapp.blueprints.metrics import metrics_blueprint
from webapp.blueprints.orders import orders_blueprint
from webapp.blueprints.products import products_blueprint
from webapp.blueprints.users import users_blueprint
from webapp.cache import RedisUserCache, redis_client
from webapp.config import Config, load_config
from webapp.converters import IdConverter
from webapp.db import Database
from webapp.observability import Metrics, RequestLog, configure_logging
from webapp.repositories import IdempotencyRepository, OrderRepository, ProductRepository, UserRepository
from webapp.resilience import CircuitBreaker
from webapp.services import OrderService, ProductService, UserService
from webapp.services.health import HealthService
from webapp.services.ports import NoCache, UserCache
from webapp.transaction import RequestTransaction

__all__ = ["create_app"]


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    """Build the app. Every dependency is made here and handed down; tests override any by name.

    Overrides: database, cache, metrics, user_service, product_service, order_service, health.
    Gunicorn calls this in each worker after fork (no preload_app), so nothing here may
    connect eagerly: the pool starts its connections in the background.
    """
    # 1. Configuration: validated once, then frozen.
    config = config or load_config()
    configure_logging(config.log_level)
    metrics: Metrics = overrides.get("metrics") or Metrics(config.metrics_multiproc_dir)
    request_log = RequestLog(logging.getLogger("webapp.http"))

    # 2. Infrastructure: the Postgres pool and the optional Redis cache behind its breaker.
    database: Database = overrides.get("database") or Database(
        config.database_url,
        min_size=config.db_pool_min,
        max_size=config.db_pool_max,
        timeout=config.db_pool_timeout,
        max_waiting=config.db_pool_max_waiting,
        statement_timeout=config.request_timeout,
    )
    database.open()
    metrics.watch_pool(database.stats)
    cache: UserCache = overrides.get("cache") or _user_cache(config, metrics)

    # 3. Repositories, all on the request's lazily-begun transaction.
    transaction = RequestTransaction(database, default_timeout=config.request_timeout)
    users = UserRepository(transaction.connection)
    products = ProductRepository(transaction.connection)
    orders = OrderRepository(transaction.connection)
    idempotency_keys = IdempotencyRepository(transaction.connection)

    # 4. Services: business rules, given exactly the repositories they use.
    user_service = overrides.get("user_service") or UserService(users, orders, cache, transaction)
    product_service = overrides.get("product_service") or ProductService(products)
    order_service = overrides.get("order_service") or OrderService(
        transaction, users, products, orders, idempotency_keys,
        retention_hours=config.idempotency_retention_hours,
    )
    health = overrides.get("health") or HealthService(
        required={"database": database.ping},
        optional={"cache": getattr(cache, "ping", None)},
        timeout=config.health_timeout,
    )

    # 5. The Flask app: HTTP edge first, then the transaction (its hook must run first; see http.py).
    app = http.SyncFlask("webapp")
    app.url_map.converters["id"] = IdConverter
    http.install(
        app, request_timeout=config.request_timeout, max_body_bytes=config.max_body_bytes,
        metrics=metrics, request_log=request_log,
    )
    transaction.install(app)

    # 6. Blueprints, each handed its service.
    app.register_blueprint(health_blueprint(health))
    app.register_blueprint(metrics_blueprint(metrics, config.metrics_token))
    app.register_blueprint(meta_blueprint())
    app.register_blueprint(users_blueprint(user_service))
    app.register_blueprint(products_blueprint(product_service))
    app.register_blueprint(orders_blueprint(order_service))

    app.assert_sync_only()

    # Kept for gunicorn's hooks and for tests; the app itself reaches them only through the above.
    app.extensions["webapp"] = {
        "config": config, "database": database, "transaction": transaction, "health": health, "metrics": metrics,
        "request_log": request_log,
    }
    logging.getLogger(__name__).info("app created", extra={"cache": config.redis_url is not None})
    return app


def _user_cache(config: Config, metrics: Metrics) -> UserCache:
    """Redis behind a breaker when REDIS_URL is set; otherwise a cache that always misses."""
    if not config.redis_url:
        return NoCache()
    breaker = CircuitBreaker(
        "redis",
        threshold=config.breaker_threshold,
        reset_after=config.breaker_reset_after,
        is_failure=lambda exc: isinstance(exc, RedisUserCache.unhealthy_errors),
        on_transition=lambda name, _old, new: metrics.set_breaker_state(name, new),
    )
    metrics.set_breaker_state("redis", "closed")
    return RedisUserCache(redis_client(config.redis_url, config.cache_socket_timeout), breaker, config.cache_ttl)
