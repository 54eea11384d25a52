"""Queue time on the request's clock, proven through nginx (issue 22): a product row locked, a burst of orders for it.

A rival holds the product's row FOR UPDATE for LOCK_SECONDS. Eight POST /orders for it arrive at
once, then an unrelated GET /users/<id>; the instance has 2 sync workers and REQUEST_TIMEOUT=4.
Two POSTs take the workers and wait on the lock until their deadline (504); the rest wait in the
listen backlog. Without queue time on their clock each then waits its own whole budget again,
and the GET waits behind all of them. With nginx's X-Request-Start honoured, a POST whose budget
ran out in the backlog is answered 503 + Retry-After at once and the GET is served as soon as a
worker frees. Afterwards every client resends what failed with its Idempotency-Key, as a 503
invites, so every order ends placed exactly once.

`row_lock_burst` runs it against any nginx port (tests/functional/test_queue_time_through_nginx.py);
`queue_time_row_lock` is the `make fault` scenario: the same, with the header stripped (before) and honoured.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import psycopg

from bench.cluster import Cluster
from bench.faultenv import LOAD_PRODUCT, FaultEnv, Verdict
from bench.load import Outcome, RequestSpec, send

REQUEST_TIMEOUT = 4.0
LOCK_SECONDS = 12.0
POSTS = 8
GET_AFTER = 1.0  # the unrelated GET arrives once the POSTs have queued
SLACK = 0.5  # nginx, the client's threads and the lock's cancel on a busy 2-core machine
# The instance: 2 workers, a 4 s budget, a worker timeout above it (and within the graceful timeout).
SETTINGS = {"REQUEST_TIMEOUT": f"{REQUEST_TIMEOUT:g}", "GUNICORN_TIMEOUT": "8", "GUNICORN_GRACEFUL_TIMEOUT": "10",
            "SHUTDOWN_DRAIN_SECONDS": "0.5", "LOG_LEVEL": "info"}
NGINX_STAMP = 'proxy_set_header X-Request-Start "t=${msec}";'


@dataclass
class RowLockRun:
    """What the burst got: each POST's first attempt, the GET, the resends, and the orders stored."""

    posts: list[Outcome]
    get: Outcome
    sent_at: float  # time.monotonic() when the POSTs were sent
    released_at: float  # when the rival let go of the row
    resends: list[Outcome] = field(default_factory=list)
    orders_stored: int = 0

    @property
    def answers(self) -> list[Outcome]:
        return [*self.posts, self.get, *self.resends]

    def created(self) -> list[int]:
        return [o.json()["id"] for o in self.answers if o.kind == "response" and o.status == 201]

    def queued_out(self) -> list[Outcome]:
        """The POSTs answered 503 queued_too_long with Retry-After."""
        return [o for o in self.posts if _code(o) == "queued_too_long" and o.status == 503 and o.retry_after]

    def numbers(self) -> dict[str, object]:
        return {
            "posts": sorted(f"{o.status or o.kind} {_code(o) or ''}@{o.elapsed:.1f}s".replace(" @", "@")
                            for o in self.posts),
            "get": f"{self.get.status or self.get.kind}@{self.get.elapsed:.1f}s (sent {GET_AFTER:g} s after the POSTs)",
            "slowest_s": round(max(o.elapsed for o in [*self.posts, self.get]), 2),
            "queued_too_long": len(self.queued_out()),
            "lock_s": round(self.released_at - self.sent_at, 1),
            "orders_201": len(self.created()), "orders_stored": self.orders_stored,
        }


def _code(o: Outcome) -> str | None:
    try:
        return str(o.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def row_lock_burst(port: int, database_url: str, *, product_id: int, user_id: int,
                   lock_seconds: float = LOCK_SECONDS) -> RowLockRun:
    """Lock the product's row, send the POSTs and the GET through `port`, release, resend what failed; count orders."""
    keys = [f"rowlock-{uuid.uuid4().hex}" for _ in range(POSTS)]

    def order(key: str) -> RequestSpec:
        return ("POST", "/orders", {"user_id": user_id, "items": [{"product_id": product_id, "quantity": 1}]},
                {"Idempotency-Key": key})

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()
        last_order = int(row[0]) if row else 0
    posts: dict[str, Outcome] = {}
    got: list[Outcome] = []
    lock = threading.Lock()

    def post(key: str) -> None:
        outcome = send(port, order(key), timeout=lock_seconds + 30)
        with lock:
            posts[key] = outcome

    with psycopg.connect(database_url) as rival:
        rival.execute("SELECT 1 FROM products WHERE id = %s FOR UPDATE", (product_id,))
        sent_at = time.monotonic()
        threads = [threading.Thread(target=post, args=(key,)) for key in keys]
        for thread in threads:
            thread.start()
        time.sleep(GET_AFTER)
        getter = threading.Thread(target=lambda: got.append(
            send(port, ("GET", f"/users/{user_id}", None), timeout=lock_seconds + 30)))
        getter.start()
        time.sleep(max(0.0, sent_at + lock_seconds - time.monotonic()))
        rival.rollback()
        released_at = time.monotonic()
    for thread in [*threads, getter]:
        thread.join(lock_seconds + 40)
    run = RowLockRun([posts[key] for key in keys], got[0], sent_at, released_at)
    # The clients whose order failed resend it with the same key (a 503 says when: Retry-After).
    run.resends = [send(port, order(key), timeout=30) for key in keys if posts[key].status != 201]
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM orders WHERE id > %s", (last_order,)).fetchone()
    run.orders_stored = int(row[0]) if row else -1
    return run


def without_request_start(cluster: Cluster) -> Cluster:
    """The same cluster with nginx sending no X-Request-Start (an empty value drops the header): the "before"."""
    conf = cluster.nginx.dir / "nginx.conf"
    text = conf.read_text()
    if NGINX_STAMP not in text:
        raise ValueError(f"deploy/nginx.conf no longer says {NGINX_STAMP!r}")
    conf.write_text(text.replace(NGINX_STAMP, 'proxy_set_header X-Request-Start "";'))
    return cluster


def contract(v: Verdict, run: RowLockRun) -> None:
    """What queue time on the request's clock promises in the row-lock burst."""
    limit = REQUEST_TIMEOUT + SLACK
    first_freed = min(o.ended for o in run.posts)  # the first two POSTs' 504: a worker frees
    v.expect(all(o.kind == "response" for o in run.answers), "every request was answered")
    v.expect(max(o.elapsed for o in [*run.posts, run.get]) <= limit,
             f"nothing answered later than REQUEST_TIMEOUT + {SLACK:g} s after nginx received it")
    # Those that reached a worker with a few ms of budget left end in a 504 at that deadline instead.
    v.expect(len(run.queued_out()) >= 1, "a queued POST whose budget ran out gets 503 queued_too_long + Retry-After")
    v.expect(all(_code(o) in ("queued_too_long", "deadline_exceeded") for o in run.posts),
             "every POST that failed is a 503 queued_too_long or a 504 deadline_exceeded")
    v.expect(max(o.ended for o in run.posts) - first_freed <= SLACK,
             "the queued POSTs are answered as soon as a worker frees, not after a budget of their own")
    v.expect(run.get.status == 200 and run.get.ended - first_freed <= SLACK,
             "the unrelated GET is served as soon as a worker frees, long before the lock is released")
    v.expect(run.orders_stored == len(run.created()) == len(set(run.created())),
             "every 201 is stored, once (orders in the database = 201 answers)")
    v.expect(len(run.created()) == POSTS, "every order ends placed once resent with its Idempotency-Key")


def queue_time_row_lock(env: FaultEnv) -> Verdict:
    """The row-lock burst through nginx with X-Request-Start stripped (before) and honoured (after)."""
    v = Verdict("queue_time_row_lock")
    user_id = 1
    with without_request_start(env.cluster("queue_time_stripped", instances=1, workers=2, **SETTINGS)) as cluster:
        before = row_lock_burst(cluster.port, env.database_url, product_id=LOAD_PRODUCT, user_id=user_id)
    with env.cluster("queue_time_honoured", instances=1, workers=2, **SETTINGS) as cluster:
        after = row_lock_burst(cluster.port, env.database_url, product_id=LOAD_PRODUCT, user_id=user_id)
    v.numbers = {"header_stripped": before.numbers(), "header_honoured": after.numbers()}
    contract(v, after)
    return v
