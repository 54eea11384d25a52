"""Fault scenarios through the deployed topology: nginx → 3 instances × 2 workers → PgBouncer (transaction mode).

Each starts its own Cluster on the suite's Postgres, loads it through nginx, injects one fault and
checks the contract; each stays under ~40 s.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from bench.faultenv import LOAD_PRODUCT, USERS, FaultEnv, Verdict, tally
from bench.load import Load, Outcome, RequestSpec, count, send
from bench.scenarios import _is_retryable_503, _orders_stored, _p99_ms, failed, get_user, outage
from webapp.postgres.watchdog import GRACE_SECONDS


def mixed(users: int = USERS, product_id: int = LOAD_PRODUCT) -> Callable[[int], RequestSpec]:
    """80 % GET /users/<id>, 20 % POST /orders (1 of a large-stock product) with a fresh Idempotency-Key."""

    def make(_n: int) -> RequestSpec:
        if random.random() < 0.2:
            body = {"user_id": random.randint(1, users), "items": [{"product_id": product_id, "quantity": 1}]}
            return ("POST", "/orders", body, {"Idempotency-Key": f"load-{uuid.uuid4().hex}"})
        return ("GET", f"/users/{random.randint(1, users)}", None)

    return make


def created_ids(outcomes: list[Outcome]) -> list[int]:
    return [o.json()["id"] for o in outcomes if o.kind == "response" and o.status == 201]


def rolling_restart_under_load(env: FaultEnv) -> Verdict:
    """Every instance restarted in turn under mixed load through nginx: 0 failed requests, every 201 stored."""
    v = Verdict("cluster_rolling_restart")
    t = env.timing
    with env.cluster("rolling_restart") as cluster:
        load = Load(cluster.port, mixed(), threads=t.threads, seconds=60).start()
        time.sleep(t.before)
        ready_s = [round(cluster.restart(i), 2) for i in range(len(cluster.ports))]
        time.sleep(t.after)
        outcomes = load.stop()
        retried = sum("," in line for line in cluster.nginx.access_lines())  # upstream=a, b: tried a, then b
        no_live = cluster.nginx.error_text().count("no live upstreams")
    created = created_ids(outcomes)
    stored, sold = _orders_stored(env.database_url, created)
    v.numbers = {
        **tally(outcomes), "restart_to_ready_s": ready_s, "nginx_retried": retried, "no_live_upstreams": no_live,
        "slowest_s": round(max((o.elapsed for o in outcomes), default=0.0), 2), "p99_ms": _p99_ms(outcomes),
        "orders_201": len(created), "orders_201_stored": stored,
    }
    v.expect(count(outcomes, failed) == 0, "0 failed requests across the rolling restart")
    v.expect(len(outcomes) > 100, "the load actually ran (> 100 requests)")
    v.expect(stored == len(created), "every order answered 201 is in the database")
    v.expect(sold[0] == sold[1], "stock sold equals the quantities in stored orders")
    return v


def instance_killed_under_load(env: FaultEnv) -> Verdict:
    """One instance SIGKILLed: GETs never fail; a POST that failed is retried with its key and lands exactly once."""
    v = Verdict("cluster_instance_killed")
    t = env.timing
    first_new_order = _next_order_id(env.database_url)
    with env.cluster("instance_killed") as cluster:
        gets = Load(cluster.port, get_user, threads=t.threads, seconds=60).start()
        posts = KeyedOrders(cluster.port, threads=6).start()
        time.sleep(t.before)
        # Hold the ordered product's row so POSTs wait inside their transactions on every instance:
        # the kill then surely catches some mid-flight (nginx must not resend those; the client does).
        with psycopg.connect(env.database_url) as rival:
            rival.execute("SELECT 1 FROM products WHERE id = %s FOR UPDATE", (LOAD_PRODUCT,))
            lock_wait_s = _wait_for_lock_waiters(env.database_url, 4)
            cluster.kill(0)
            rival.rollback()
        time.sleep(t.after + 1)
        get_outcomes = gets.stop()
        keys = posts.stop()
    attempts = [len(statuses) for statuses in keys.values()]
    landed = {key for key, statuses in keys.items() if statuses[-1] == 201}
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM orders WHERE id >= %s", (first_new_order,)).fetchone()
        stored_keys = conn.execute(
            "SELECT count(*) FROM idempotency_keys WHERE key = ANY(%s)", (list(keys),)
        ).fetchone()
    orders_stored = int(row[0]) if row else -1
    v.numbers = {
        "gets": tally(get_outcomes), "posts": len(keys), "posts_retried": sum(a > 1 for a in attempts),
        "post_first_failures": sorted({s for statuses in keys.values() for s in statuses[:-1]}),
        "posts_201": len(landed), "lock_wait_s": round(lock_wait_s, 2), "orders_stored": orders_stored,
        "keys_stored": int(stored_keys[0]) if stored_keys else -1,
    }
    v.expect(count(get_outcomes, failed) == 0, "0 failed GETs (nginx retries them on another instance)")
    v.expect(len(landed) == len(keys), "every POST ends in 201 once retried with its Idempotency-Key")
    v.expect(orders_stored == len(landed), "exactly one order per key: no retry placed a second one")
    v.expect(len(keys) > 20, "the POST load actually ran (> 20 keys)")
    return v


class KeyedOrders:
    """Threads placing orders, each with a fresh key, retrying a failed one with the SAME key (as a client should)."""

    RETRYABLE = (502, 503, 504)

    def __init__(self, port: int, *, threads: int):
        self.port = port
        self.keys: dict[str, list[int]] = {}  # key -> the status of each attempt (0: no response)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> KeyedOrders:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> dict[str, list[int]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return self.keys

    def _run(self) -> None:
        while not self._stop.is_set():
            key = f"kill-{uuid.uuid4().hex}"
            body = {"user_id": random.randint(1, USERS), "items": [{"product_id": LOAD_PRODUCT, "quantity": 1}]}
            statuses: list[int] = []
            for _attempt in range(5):
                outcome = send(self.port, ("POST", "/orders", body, {"Idempotency-Key": key}), timeout=10)
                statuses.append(outcome.status if outcome.kind == "response" else 0)
                if outcome.kind == "response" and outcome.status not in self.RETRYABLE:
                    break
                time.sleep(0.2)
            with self._lock:
                self.keys[key] = statuses


def _wait_for_lock_waiters(url: str, count: int, timeout: float = 1.5) -> float:
    """Seconds until `count` sessions wait on a lock (at most timeout: below REQUEST_TIMEOUT, so none gives up)."""
    started = time.monotonic()
    # Autocommit: inside one transaction pg_stat_activity would be a snapshot that never changes.
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() - started < timeout:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if row and row[0] >= count:
                break
            time.sleep(0.01)
    return time.monotonic() - started


def _next_order_id(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM orders").fetchone()
    return int(row[0]) if row else 1


def pgbouncer_paused_under_load(env: FaultEnv) -> Verdict:
    """PgBouncer PAUSEd for a few seconds: fast 503 + Retry-After meanwhile; recovery by itself after RESUME."""
    v = Verdict("cluster_pgbouncer_paused")
    t = env.timing
    with env.cluster("pgbouncer_paused", REQUEST_TIMEOUT="1") as cluster:
        timeout = 1.0
        # One client per worker: more would queue in nginx before any deadline starts (see postgres_restart).
        threads = len(cluster.ports) * cluster.workers
        load = Load(cluster.port, mixed(), threads=threads, seconds=60, timeout=timeout + 10).start()
        time.sleep(t.before)
        paused_at, resumed_at = outage(cluster.pgbouncer.pause, cluster.pgbouncer.resume, t.pg_down)
        time.sleep(3 + t.after)
        outcomes = load.stop()
    bad = [o for o in outcomes if failed(o)]
    while_paused = [o for o in outcomes if paused_at + 0.2 <= o.started < resumed_at]
    late = [o for o in bad if o.started >= resumed_at + 2]
    created = created_ids(outcomes)
    stored, _sold = _orders_stored(env.database_url, created)
    slowest = max((o.elapsed for o in outcomes), default=0.0)
    v.numbers = {
        **tally(outcomes), "while_paused": tally(while_paused), "paused_s": round(resumed_at - paused_at, 2),
        "slowest_s": round(slowest, 2), "failures_2s_after_resume": len(late),
        "orders_201": len(created), "orders_201_stored": stored,
    }
    v.expect(count(while_paused, _is_retryable_503) > 0, "while paused, requests get 503 + Retry-After + JSON")
    # A request caught in flight by the PAUSE waits its deadline, then the watchdog cuts it: a JSON 504.
    # That opens the database breaker, so the requests after it get a 503 + Retry-After at once.
    v.expect(all(_is_retryable_503(o) or _is_json_504(o) for o in bad),
             f"every failure is a JSON 503 + Retry-After or a JSON 504 at the deadline (got {tally(bad)})")
    # Only a worker's first request and its breaker's trials (one per DB_BREAKER_RESET_AFTER) wait.
    v.expect(count(bad, _is_json_504) * 10 <= len(bad), "nine failures in ten are fast 503s, not waits")
    # Deadline + the watchdog's grace, + 0.1 s for nginx and the client's own clock on a shared host.
    limit = timeout + GRACE_SECONDS + 0.1
    v.expect(slowest <= limit, f"no request takes longer than REQUEST_TIMEOUT ({timeout} s) + grace + 0.1 s")
    v.expect(not late, "no failure starts later than 2 s after RESUME")
    v.expect(count(outcomes, lambda o: o.started >= resumed_at + 2 and o.status in (200, 201)) > 10,
             "requests succeed after RESUME")
    v.expect(stored == len(created), "every order answered 201 is in the database")
    return v


def _is_json_504(o: Outcome) -> bool:
    if o.kind != "response" or o.status != 504:
        return False
    try:
        return o.json()["error"]["code"] == "deadline_exceeded"
    except (ValueError, KeyError, TypeError):
        return False


def slow_clients_behind_nginx(env: FaultEnv) -> Verdict:
    """50 slow-header and 50 slow-body sockets through nginx leave normal requests' p99 within 2× of a quiet run."""
    v = Verdict("cluster_slow_clients")
    seconds = 4.0
    with env.cluster("slow_clients") as cluster:
        quiet = Load(cluster.port, get_user, threads=4, seconds=seconds).start()
        time.sleep(seconds + 0.1)
        quiet_outcomes = quiet.stop()
        with slow_sockets(cluster.port, headers=50, bodies=50) as open_sockets:
            loaded = Load(cluster.port, get_user, threads=4, seconds=seconds).start()
            time.sleep(seconds + 0.1)
            loaded_outcomes = loaded.stop()
            still_open = open_sockets()
        # The same attack straight at one instance (no proxy), for comparison only: what nginx saves us from.
        with slow_sockets(cluster.ports[1], headers=2, bodies=2):
            direct = Load(cluster.ports[1], get_user, threads=2, seconds=2, timeout=2).start()
            time.sleep(2.1)
            direct_outcomes = direct.stop()
    quiet_p99, loaded_p99 = _p99_ms(quiet_outcomes), _p99_ms(loaded_outcomes)
    v.numbers = {
        "quiet": tally(quiet_outcomes), "quiet_p99_ms": quiet_p99,
        "with_100_slow": tally(loaded_outcomes), "with_100_slow_p99_ms": loaded_p99,
        "slow_sockets_still_open": still_open,
        "direct_to_an_instance_with_4_slow": tally(direct_outcomes),
    }
    v.expect(count(quiet_outcomes + loaded_outcomes, failed) == 0, "0 failed requests through nginx")
    v.expect(still_open >= 90, "the slow sockets were still open (held by nginx) while measuring")
    v.expect(
        quiet_p99 is not None and loaded_p99 is not None and loaded_p99 <= 2 * quiet_p99,
        "p99 with 100 slow sockets within 2× of the quiet run",
    )
    return v


@contextmanager
def slow_sockets(port: int, *, headers: int, bodies: int) -> Iterator[Callable[[], int]]:
    """Sockets that send a request 1 byte a second: `headers` never finish their headers, `bodies`
    announce Content-Length: 1000 and drip the body. Yields a function counting those still open."""
    socks: list[socket.socket] = []
    for i in range(headers + bodies):
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        if i < headers:
            sock.sendall(b"GET /users/1 HTTP/1.1\r\nHost: x\r\n")
        else:
            sock.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{")
        socks.append(sock)
    stop = threading.Event()
    alive = set(range(len(socks)))

    def drip() -> None:
        while not stop.wait(1.0):
            for i in list(alive):
                try:
                    socks[i].send(b"X" if i < headers else b" ")
                except OSError:  # the server gave up on it (a timeout): that is its right
                    alive.discard(i)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        yield lambda: len(alive)
    finally:
        stop.set()
        dripper.join(5)
        for sock in socks:
            sock.close()
