"""Redis read-through cache for users: optional, behind a circuit breaker, never an outage."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis

from webapp.domain.models import User
from webapp.resilience import CircuitBreaker, CircuitOpen
from webapp.services.ports import Check, UserCache
from webapp.settings import Config

log = logging.getLogger(__name__)

# Only these mean "Redis is unwell" and count towards opening the breaker. Other Redis errors
# (OOM when maxmemory is full, READONLY on a demoted replica) are answers, not silence: they
# are still a miss for the caller, but they do not open the circuit.
UNHEALTHY: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)


def redis_client(url: str, socket_timeout: float) -> redis.Redis:
    """A client with short timeouts: a slow cache must cost milliseconds, not the request."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry_on_timeout=False,
        retry=None,  # no hidden retries inside redis-py: the breaker decides
        health_check_interval=0,
    )


def cache_from_config(
    config: Config,
    on_breaker_transition: Callable[[str, str, str], None],
    instrument: Callable[[redis.Redis], None] | None = None,
) -> UserCache:
    """Redis behind its own breaker when REDIS_URL is set; otherwise a cache that always misses.

    instrument: called once with the client (tracing's instrumentation: a span per Redis command).
    """
    if not config.redis_url:
        return NoCache()
    breaker = CircuitBreaker(
        "redis",
        threshold=config.breaker_threshold,
        reset_after=config.breaker_reset_after,
        is_failure=lambda exc: isinstance(exc, UNHEALTHY),
        on_transition=on_breaker_transition,
    )
    on_breaker_transition("redis", "closed", "closed")  # the gauge exists from the start
    client = redis_client(config.redis_url, config.cache_socket_timeout)
    if instrument is not None:
        instrument(client)
    return RedisUserCache(client, breaker, config.cache_ttl)


class NoCache:
    """The cache used when REDIS_URL is unset: always a miss, nothing to health-check."""

    health_check: Check | None = None

    def get(self, user_id: int) -> User | None:
        return None

    def put(self, user: User) -> None:
        pass

    def invalidate(self, user_id: int) -> None:
        pass


class RedisUserCache:
    """get/put/invalidate users in Redis; every failure is a miss, counted by the breaker."""

    def __init__(self, client: redis.Redis, breaker: CircuitBreaker, ttl: int, prefix: str = "user:"):
        self._client = client
        self._breaker = breaker
        self._ttl = ttl
        self._prefix = prefix
        self.health_check = self.ping

    def get(self, user_id: int) -> User | None:
        """The cached user, or None on a miss, an unreadable value, or an unwell Redis."""
        raw = self._guarded(self._client.get, f"{self._prefix}{user_id}")
        if not raw:
            return None
        try:
            return User.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            return None  # a stale or foreign value is just a miss

    def put(self, user: User) -> None:
        """Cache the user for ttl seconds (best effort)."""
        self._guarded(self._client.set, f"{self._prefix}{user.id}", json.dumps(user.as_json()), ex=self._ttl)

    def invalidate(self, user_id: int) -> None:
        """Drop the cached user (best effort: if Redis is unreachable now, the TTL bounds the staleness)."""
        self._guarded(self._client.delete, f"{self._prefix}{user_id}")

    def ping(self, timeout: float) -> None:
        """Raise unless Redis answers PING (health check; bypasses the breaker to see recovery)."""
        # timeout is not needed: the client's own socket timeouts (tens of ms) are far shorter.
        if not self._client.ping():
            raise redis.ConnectionError("PING failed")

    def _guarded(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return self._breaker.call(fn, *args, **kwargs)
        except CircuitOpen:
            return None  # open: do not wait on Redis at all
        except (redis.RedisError, OSError) as exc:
            # Every Redis failure is a miss: the cache must never turn into a 5xx. DEBUG, because
            # during an outage this fires on every request; the breaker's transitions are the signal.
            log.debug("cache unavailable: %s", type(exc).__name__)
            return None
