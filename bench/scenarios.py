"""The fault scenarios: each starts a service, loads it, injects one fault, and checks the contract."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench.faultenv import LOAD_PRODUCT, USERS, FaultEnv, Timing, Verdict, tally
from bench.load import Load, Outcome, RequestSpec, count, fire_at_once
from bench.servers import Gunicorn, http_get
from tests.polling import wait_until
from tests.tcp_relay import TcpRelay, relayed_url  # the relay tests/functional uses too

USER_ROUTE = "/users/<id:user_id>"


def get_user(_n: int) -> RequestSpec:
    return ("GET", f"/users/{random.randint(1, USERS)}", None)


def get_or_order(n: int) -> RequestSpec:
    """Every third request places an order (quantity 1 of the large-stock product)."""
    if n % 3 == 0:
        return (
            "POST",
            "/orders",
            {
                "user_id": random.randint(1, USERS),
                "items": [{"product_id": LOAD_PRODUCT, "quantity": 1}],
            },
        )
    return get_user(n)


def failed(o: Outcome) -> bool:
    return o.kind != "response" or o.status >= 400


def _under_load(
    service: Gunicorn, timing: Timing, make: Callable[[int], RequestSpec] = get_user, **load: Any
) -> tuple[set[int], Load]:
    """Wait for the service and all its workers, start the load, let the "before" phase run.

    Returns the worker pids from before any fault, and the running load (stop() it for the outcomes).
    """
    service.wait_ready()
    workers = set(service.wait_workers())
    started = Load(service.port, make, **{"threads": timing.threads, "seconds": 30, **load}).start()
    time.sleep(timing.before)
    return workers, started


def sighup_under_load(env: FaultEnv) -> Verdict:
    """SIGHUP (reload: new workers, old ones finish their request) loses no request."""
    v = Verdict("sighup_under_load")
    t = env.timing
    with env.service("sighup") as service:
        old, load = _under_load(service, t)
        service.signal(signal.SIGHUP)
        hup_at = time.monotonic()
        deadline = hup_at + 15
        while time.monotonic() < deadline and set(service.worker_pids()) & old:
            time.sleep(0.05)
        replaced = not (set(service.worker_pids()) & old)
        reload_s = time.monotonic() - hup_at
        time.sleep(t.after)
        outcomes = load.stop()
    v.numbers = {**tally(outcomes), "reload_s": round(reload_s, 2)}
    v.expect(replaced, "every old worker was replaced after SIGHUP")
    v.expect(count(outcomes, failed) == 0, "0 failed requests across the reload")
    v.expect(len(outcomes) > 100, "the load actually ran (> 100 requests)")
    return v


def sigterm_under_load(env: FaultEnv) -> Verdict:
    """SIGTERM: every accepted request is answered; master exits 0 within the stop window."""
    v = Verdict("sigterm_under_load")
    t = env.timing
    service = env.service("sigterm")
    # Drain, then gunicorn's graceful stop: the whole of it must fit.
    stop_window = float(service.env["SHUTDOWN_DRAIN_SECONDS"]) + float(
        service.env["GUNICORN_GRACEFUL_TIMEOUT"]
    )
    with service:
        _workers, load = _under_load(service, t)
        service.signal(signal.SIGTERM)
        term_at = time.monotonic()
        assert service.proc is not None
        try:
            code: int | None = service.proc.wait(stop_window + 5)
        except subprocess.TimeoutExpired:
            code = None
        exit_s = time.monotonic() - term_at
        time.sleep(0.3)  # clients now see "refused": nobody listens any more
        outcomes = load.stop()
    during = [o for o in outcomes if o.ended >= term_at]
    v.numbers = {
        **tally(outcomes),
        "after_sigterm": tally(during),
        "exit_code": code,
        "exit_s": round(exit_s, 2),
    }
    v.expect(
        count(outcomes, lambda o: o.kind == "dropped") == 0,
        "every accepted connection got a response (0 dropped/reset)",
    )
    v.expect(
        count(outcomes, lambda o: o.kind == "timeout") == 0,
        "no request hung until the client timeout",
    )
    v.expect(
        count(outcomes, lambda o: o.kind == "response" and o.status >= 500) == 0,
        "0 5xx while stopping",
    )
    v.expect(code == 0, "master exit status 0")
    v.expect(
        exit_s <= stop_window + 1,
        f"exit within the stop window (drain + graceful = {stop_window:.0f} s, + 1 s)",
    )
    return v


def postgres_restart_under_load(env: FaultEnv) -> Verdict:
    """Postgres down: fast 503 + Retry-After, never past the deadline; back within 5 s; no 201 lost."""
    v = Verdict("postgres_restart_under_load")
    t = env.timing
    # A 1 s budget: an outage of a few seconds then spans several waves of requests.
    service = env.service("postgres_restart", REQUEST_TIMEOUT="1")
    timeout = float(service.env["REQUEST_TIMEOUT"])
    with service:
        # One client per worker: more would wait in the listen backlog before a worker (and the
        # request's deadline) even starts, and the client's clock would measure that queue too.
        _workers, load = _under_load(
            service, t, get_or_order, threads=service.workers, seconds=60, timeout=timeout + 10
        )
        down_at, up_at = outage(lambda: env.pg.stop("fast"), env.pg.start, t.pg_down)
        # Keep loading until 5 s after Postgres is back plus the "after" phase, so a slow recovery shows.
        time.sleep(5 + t.after)
        outcomes = load.stop()
    bad = [o for o in outcomes if failed(o)]
    while_down = [o for o in outcomes if down_at + 0.2 <= o.started < up_at]
    late_failures = [o for o in bad if o.started >= up_at]
    recovered_s = max((o.started - up_at for o in late_failures), default=0.0)
    unexpected = [o for o in bad if not _is_retryable_503(o)]
    slowest = max((o.elapsed for o in outcomes), default=0.0)
    created = [
        o.json()["id"] for o in outcomes if o.kind == "response" and o.status == 201
    ]
    stored, sold = _orders_stored(env.database_url, created)
    v.numbers = {
        **tally(outcomes),
        "while_down": tally(while_down),
        "down_s": round(up_at - down_at, 2),
        "recovered_after_s": round(recovered_s, 2),
        "slowest_s": round(slowest, 2),
        "p50_503_ms": _p50_ms([o for o in bad if o.status == 503]),
        "orders_201": len(created),
        "orders_201_stored": stored,
        "stock_sold_vs_items": sold,
    }
    v.expect(
        count(while_down, _is_retryable_503) > 0,
        "while Postgres is down requests get 503 + Retry-After + JSON error",
    )
    v.expect(
        not unexpected,
        f"every failure is a 503 + Retry-After (got {tally(unexpected)})",
    )
    v.expect(
        slowest <= timeout + 0.5,
        f"no request takes longer than REQUEST_TIMEOUT ({timeout} s) + 0.5 s",
    )
    v.expect(
        recovered_s <= 5.0, "no failure starts later than 5 s after Postgres is back"
    )
    v.expect(
        count(outcomes, lambda o: o.started >= up_at + 5 and o.status in (200, 201))
        > 10,
        "requests succeed after recovery",
    )
    v.expect(stored == len(created), "every order answered 201 is in the database")
    v.expect(
        sold[0] == sold[1],
        "stock sold equals the quantities in stored orders (no half-applied order)",
    )
    return v


def outage(begin: Callable[[], None], end: Callable[[], None], seconds: float) -> tuple[float, float]:
    """begin() the fault, wait, end() it; return when it began and when it was over (monotonic)."""
    began = time.monotonic()
    begin()
    time.sleep(seconds)
    end()
    return began, time.monotonic()


def _is_retryable_503(o: Outcome) -> bool:
    if o.kind != "response" or o.status != 503 or not o.retry_after:
        return False
    try:
        return "code" in o.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False


def _p50_ms(outcomes: list[Outcome]) -> float | None:
    if not outcomes:
        return None
    return round(sorted(o.elapsed for o in outcomes)[len(outcomes) // 2] * 1000, 1)


def _orders_stored(url: str, order_ids: list[int]) -> tuple[int, tuple[int, int]]:
    """How many of order_ids exist; and (stock sold, quantity in order_items) for the load product."""
    from bench.seed import LARGE_STOCK

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM orders WHERE id = ANY(%s)", (order_ids,)
        ).fetchone()
        stock = conn.execute(
            "SELECT stock FROM products WHERE id = %s", (LOAD_PRODUCT,)
        ).fetchone()
        items = conn.execute(
            "SELECT coalesce(sum(quantity), 0) FROM order_items WHERE product_id = %s",
            (LOAD_PRODUCT,),
        ).fetchone()
    assert stored and stock and items
    return int(stored[0]), (LARGE_STOCK - int(stock[0]), int(items[0]))


def redis_killed_under_load(env: FaultEnv) -> Verdict:
    """Redis SIGKILLed mid-load: the cache is optional, so 0 5xx and no request fails."""
    v = Verdict("redis_killed_under_load")
    t = env.timing
    redis = env.new_redis()
    try:
        with env.service("redis_killed", REDIS_URL=redis.url) as service:
            def hot(_n: int) -> tuple[str, str, None]:
                return ("GET", f"/users/{random.randint(1, 50)}", None)

            _workers, load = _under_load(service, t, hot)
            redis.kill()
            killed_at = time.monotonic()
            time.sleep(t.after + 1)
            outcomes = load.stop()
            ready = http_get(service.port, "/readyz")
    finally:
        redis.kill()
    after = [o for o in outcomes if o.started >= killed_at]
    v.numbers = {
        **tally(outcomes),
        "after_kill": tally(after),
        "p99_after_kill_ms": _p99_ms(after),
        "readyz_after": ready[0],
    }
    v.expect(
        count(outcomes, lambda o: o.kind == "response" and o.status >= 500) == 0,
        "0 5xx",
    )
    v.expect(
        count(outcomes, failed) == 0, "every request succeeded (Redis is optional)"
    )
    v.expect(len(after) > 50, "load continued after the kill (> 50 requests)")
    v.expect(ready[0] == 200, "/readyz stays 200 (degraded) without Redis")
    return v


def _p99_ms(outcomes: list[Outcome]) -> float | None:
    if not outcomes:
        return None
    ordered = sorted(o.elapsed for o in outcomes)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1)


def worker_killed_under_load(env: FaultEnv) -> Verdict:
    """A worker SIGKILLed: respawned, no 5xx anywhere, and /metrics still sums every worker's counts."""
    v = Verdict("worker_killed_under_load")
    t = env.timing
    with env.service("worker_killed") as service:
        before, load = _under_load(service, t)
        victim = min(before)
        service.kill_worker(victim)
        killed_at = time.monotonic()
        respawn_s = None
        while time.monotonic() < killed_at + 10:
            pids = set(service.worker_pids())
            if victim not in pids and len(pids) == service.workers:
                respawn_s = time.monotonic() - killed_at
                break
            time.sleep(0.02)
        time.sleep(t.after)
        outcomes = load.stop()
        counted = _counted_200(http_get(service.port, "/metrics")[1].decode())
    ok = count(outcomes, lambda o: o.kind == "response" and o.status == 200)
    dropped = count(outcomes, lambda o: o.kind == "dropped")
    v.numbers = {
        **tally(outcomes),
        "respawn_s": respawn_s and round(respawn_s, 2),
        "metrics_200": counted,
        "client_200": ok,
    }
    v.expect(respawn_s is not None, "the killed worker is replaced within 10 s")
    v.expect(
        count(outcomes, lambda o: o.kind == "response" and o.status >= 500) == 0,
        "0 5xx",
    )
    v.expect(
        dropped <= 1, "at most the one request in flight on the killed worker is lost"
    )
    # The victim may have counted its in-flight request before dying; the readiness probes are not on this route.
    v.expect(
        ok <= counted <= ok + dropped,
        "http_requests_total sums the dead worker's counts too",
    )
    return v


def _counted_200(text: str) -> int:
    pattern = re.compile(
        r'^http_requests_total\{(?=.*method="GET")(?=.*path="'
        + re.escape(USER_ROUTE)
        + r'")(?=.*status="200").*\}\s+([0-9.e+]+)$',
        re.MULTILINE,
    )
    return int(sum(float(m) for m in pattern.findall(text)))


def concurrent_orders_never_oversell(env: FaultEnv) -> Verdict:
    """100 simultaneous orders for a product with stock 20: exactly 20 × 201, 80 × 409, stock 0."""
    v = Verdict("concurrent_orders_never_oversell")
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO products (sku, name, price_cents, stock) "
            "VALUES (%s, 'Scarce', 500, 20) RETURNING id",
            (f"SCARCE-{time.time_ns()}",),
        ).fetchone()
    assert row is not None
    product_id = int(row[0])
    with env.service("oversell") as service:
        service.wait_ready()
        service.wait_workers()
        specs: list[RequestSpec] = [
            ("POST", "/orders", {"user_id": i + 1, "items": [{"product_id": product_id, "quantity": 1}]})
            for i in range(100)
        ]
        results = fire_at_once(service.port, specs)
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        stock = _scalar(conn, "SELECT stock FROM products WHERE id = %s", product_id)
        sold = _scalar(
            conn,
            "SELECT coalesce(sum(quantity), 0) FROM order_items WHERE product_id = %s",
            product_id,
        )
    v.numbers = {**tally(results), "stock_after": stock, "items_sold": sold}
    v.expect(count(results, lambda o: o.status == 201) == 20, "exactly 20 × 201")
    v.expect(count(results, lambda o: o.status == 409) == 80, "exactly 80 × 409")
    v.expect(stock == 0 and sold == 20, "stock 0 and 20 items sold")
    return v


def _scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


# --- the database link frozen (issue 12) ----------------------------------------------------

LINK_TIMEOUT = 3.0  # REQUEST_TIMEOUT for this scenario
LINK_HEALTH_TIMEOUT = 1.0
LINK_GRACE = 0.5  # past the deadline, how long the app may still wait for the database's answer
LINK_SLACK = 0.35  # what the client's clock adds: loopback, the accept queue, a busy 2-core host
LINK_RECOVERY = 5.0


def mixed_writes(n: int) -> RequestSpec:
    """GET a user, place an order, or register a user (one in four): reads and both kinds of write."""
    if n % 4 == 1:
        return ("POST", "/users", {"name": "Frozen", "email": f"frozen-{time.time_ns()}-{n}@example.org"})
    return get_or_order(n)


def readyz(_n: int) -> RequestSpec:
    return ("GET", "/readyz", None)


def database_link_frozen_under_load(env: FaultEnv) -> Verdict:
    """The link to Postgres silent (no RST, no FIN) for a while: every answer within the deadline + grace,
    /readyz 503 within HEALTH_TIMEOUT, no worker killed, recovery by itself, nothing left open, no 201 lost."""
    v = Verdict("database_link_frozen_under_load")
    t = env.timing
    with TcpRelay(("127.0.0.1", env.pg.port)) as relay:
        service = env.service(
            "database_link_frozen", DATABASE_URL=relayed_url(env.database_url, relay),
            REQUEST_TIMEOUT=str(LINK_TIMEOUT), HEALTH_TIMEOUT=str(LINK_HEALTH_TIMEOUT),
        )
        with service:
            workers, load = _under_load(service, t, mixed_writes, seconds=60, timeout=t.link_frozen + 10)
            probe = Load(service.port, readyz, threads=1, seconds=60, timeout=t.link_frozen + 10, pace=0.25).start()
            wait_until(lambda: count(probe.snapshot(), lambda o: o.status == 200) >= 2, 10)
            freeze_at = time.monotonic()
            relay.freeze()
            time.sleep(t.link_frozen)  # the fault itself lasts this long
            thaw_at = time.monotonic()
            relay.thaw()
            recovered = wait_until(lambda: _succeeded_since(load, thaw_at) and _succeeded_since(probe, thaw_at), 15)
            recovered_at = time.monotonic() if recovered else None
            time.sleep(t.after)
            outcomes, probes = load.stop(), probe.stop()
            replaced = len(workers - set(service.worker_pids()))
        log = service.log_path.read_text() if service.log_path else ""
    _check_link_frozen(v, env, service.workers, outcomes, probes, log, freeze_at, thaw_at, recovered_at)
    v.numbers["workers_replaced"] = replaced
    v.expect(replaced == 0 and "WORKER TIMEOUT" not in log, "no worker reached gunicorn's timeout")
    return v


def _check_link_frozen(
    v: Verdict, env: FaultEnv, workers: int, outcomes: list[Outcome], probes: list[Outcome], log: str,
    freeze_at: float, thaw_at: float, recovered_at: float | None,
) -> None:
    """The contract clauses of database_link_frozen_under_load, and its printed numbers."""
    limit = LINK_TIMEOUT + LINK_GRACE
    during = [o for o in outcomes if o.started < thaw_at and o.ended > freeze_at]  # caught by the freeze
    durations = _server_durations(log)
    settled = [o for o in probes if freeze_at + limit + LINK_SLACK <= o.started and o.ended < thaw_at]
    probes_during = [o for o in probes if o.started < thaw_at and o.ended > freeze_at]
    created = [o.json() for o in outcomes if o.kind == "response" and o.status == 201]
    orders = [c["id"] for c in created if "items" in c]  # the rest are users
    stored_orders, sold = _orders_stored(env.database_url, orders)
    stored_users = _users_stored(env.database_url, [c["id"] for c in created if "items" not in c])
    # At the client, a request may first wait in the accept queue behind requests stuck in every
    # worker: with C clients on W workers, at most ceil((C - W) / W) rounds of them.
    clients = env.timing.threads + 1  # and the readiness probe
    client_limit = (1 + -(-(clients - workers) // workers)) * limit + LINK_SLACK
    v.numbers = {
        **tally(outcomes),
        "during_freeze": tally(during),
        "freeze_s": round(thaw_at - freeze_at, 2),
        "max_latency_during_s": round(max((o.elapsed for o in during), default=0.0), 2),
        "server_max_s": round(max(durations, default=0.0), 2),
        "readyz_during": {**tally(probes_during), "p50_ms": _p50_ms(probes_during),
                          "max_ms": round(max((o.elapsed for o in probes_during), default=0.0) * 1000, 1)},
        "readyz_settled": {"probes": len(settled), "p50_ms": _p50_ms(settled),
                           "max_ms": round(max((o.elapsed for o in settled), default=0.0) * 1000, 1)},
        "recovered_after_s": recovered_at and round(recovered_at - thaw_at, 2),
        "idle_in_transaction": (idle := _idle_in_transaction(env.database_url)),
        "created_201": len(created),
        "stored_201": stored_orders + stored_users,
    }
    v.expect(bool(durations) and max(durations) <= limit + LINK_SLACK,
             f"no request ran longer than REQUEST_TIMEOUT + grace ({limit} s) in a worker")
    v.expect(max(o.elapsed for o in outcomes + probes) <= client_limit,
             f"no answer reached a client later than {client_limit:.2f} s (queue + deadline + grace)")
    v.expect(all(o.kind == "response" for o in outcomes + probes), "every request got an answer (none dropped)")
    v.expect(any(failed(o) for o in during) and all(_is_json_error(o, (503, 504)) for o in outcomes if failed(o)),
             "requests caught by the freeze fail, and every failure is a JSON 503 or 504")
    v.expect(len(settled) >= 3 and all(o.status == 503 for o in settled)
             and max(o.elapsed for o in settled) <= LINK_HEALTH_TIMEOUT + LINK_SLACK,
             f"/readyz answers 503 within HEALTH_TIMEOUT ({LINK_HEALTH_TIMEOUT} s) during the freeze")
    v.expect(recovered_at is not None and recovered_at - thaw_at <= LINK_RECOVERY,
             f"/readyz and requests succeed again within {LINK_RECOVERY} s of the thaw")
    v.expect(recovered_at is not None and all(not failed(o) for o in outcomes + probes
                                              if o.started >= recovered_at + 0.5), "and keep succeeding")
    v.expect(idle == 0, "no session left idle in transaction")
    v.expect(stored_orders + stored_users == len(created), "every 201 is stored, once")
    v.expect(sold[0] == sold[1], "stock sold equals the quantities in stored orders")


def _succeeded_since(load: Load, since: float) -> bool:
    return any(o.started >= since and not failed(o) for o in load.snapshot())


def _is_json_error(o: Outcome, statuses: tuple[int, ...]) -> bool:
    if o.kind != "response" or o.status not in statuses:
        return False
    try:
        return "code" in o.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False


def _server_durations(log: str) -> list[float]:
    """Seconds each logged request spent in a worker (the request lines of the service's JSON log)."""
    durations = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # not every line on stderr is ours
        if isinstance(record, dict) and record.get("message") == "request":
            durations.append(float(record["duration_ms"]) / 1000)
    return durations


def _idle_in_transaction(url: str, timeout: float = 3.0) -> int:
    """Sessions of the app left idle in a transaction, once the dropped ones have had time to end."""
    def idle() -> int:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            return _scalar(conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND application_name = 'webapp' AND state LIKE %s", "idle in transaction%")

    wait_until(lambda: idle() == 0, timeout)
    return idle()


def _users_stored(url: str, user_ids: list[int]) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return _scalar(conn, "SELECT count(*) FROM users WHERE id = ANY(%s)", user_ids)
