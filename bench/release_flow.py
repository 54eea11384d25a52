"""A release that changes the schema, as a platform runs it, under mixed load (issue 19).

The release before serves (migrated by its own `webapp migrate`); this release's release phase runs
against the same database while it keeps serving; this release's web process starts (preboot: both
serve), the router stops sending to the old one, which gets SIGTERM and drains; this release serves on.
Every response is kept with the release that answered it and the phase it started in.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.load import Outcome, RequestSpec, send
from bench.releases import imported_package, release_env, run_release_phase, web_process
from bench.seed import seed
from bench.servers import PROJECT_DIR

PRODUCT = 1  # seeded with a stock no run sells out


@dataclass(frozen=True)
class ReleaseTiming:
    """How many clients, and how long each phase lasts (seconds)."""

    clients: int
    before: float  # the release before alone, before the release phase
    after_release_phase: float  # the release before alone, on the new schema
    preboot: float  # both releases serve
    after: float  # this release alone (the old one drains meanwhile)
    users: int = 200


@dataclass
class Routed:
    """One request: which release answered, in which phase it started, and how it ended."""

    release: str  # "old" or "new"
    phase: str
    outcome: Outcome
    method: str


@dataclass
class ReleaseRun:
    """What the run saw: every request, the release phase, the orders stored, the replayed key."""

    requests: list[Routed] = field(default_factory=list)
    old_package: str = ""
    new_package: str = ""
    release_phase_rc: int | None = None
    release_phase_s: float = 0.0
    release_phase_output: str = ""
    old_exit_code: int | None = None
    orders_stored: int = 0
    created_ids: set[int] = field(default_factory=set)
    stored_ids: set[int] = field(default_factory=set)
    key_before: tuple[int, int | None] = (0, None)  # (status, order id) on the release before
    key_after: tuple[int, int | None, str | None] = (0, None, None)  # (status, order id, Idempotent-Replayed)

    def failed(self, release: str | None = None) -> list[Routed]:
        """Requests not answered 200/201: a status >= 400 or no complete response (refused, dropped, timeout)."""
        return [r for r in self.requests if (release is None or r.release == release)
                and (r.outcome.kind != "response" or r.outcome.status not in (200, 201))]

    def report(self) -> str:
        """The counts per release and phase, and the first failure, for an assertion message."""
        lines = [f"{where}: {counts}" for where, counts in self.tally().items()]
        first = next(iter(self.failed()), None)
        if first is not None:
            lines.append(f"first failure ({first.release}/{first.phase} {first.method}): {first.outcome.kind} "
                         f"{first.outcome.status} {first.outcome.body[:300]!r}")
        return "\n".join(lines)

    def tally(self) -> dict[str, dict[str, int]]:
        """Counts by release/phase, then by status or failure kind."""
        table: dict[str, dict[str, int]] = {}
        for r in self.requests:
            row = table.setdefault(f"{r.release}/{r.phase}", {})
            kind = str(r.outcome.status) if r.outcome.kind == "response" else r.outcome.kind
            row[kind] = row.get(kind, 0) + 1
        return table


class Router:
    """Client threads, each request on a new connection to one of the routed releases (as a platform's router)."""

    def __init__(self, make: Callable[[], RequestSpec], clients: int, timeout: float = 10.0):
        self.make, self.timeout = make, timeout
        self.routes: dict[str, int] = {}  # release -> port; replaced whole, read once per request
        self.phase = "before_release_phase"
        self.seen: list[Routed] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def start(self) -> Router:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Routed]:
        self._stop.set()
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(self.timeout + 5)
        return self.seen

    def _run(self) -> None:
        while not self._stop.is_set():
            release, port = random.choice(list(self.routes.items()))
            phase, spec = self.phase, self.make()
            outcome = send(port, spec, self.timeout)
            with self._lock:
                self.seen.append(Routed(release, phase, outcome, spec[0]))


def mixed_request(users: int) -> Callable[[], RequestSpec]:
    """80 % GET /users/<id>, 20 % POST /orders with a fresh Idempotency-Key."""
    def make() -> RequestSpec:
        user = random.randint(1, users)
        if random.random() < 0.2:
            body = {"user_id": user, "items": [{"product_id": PRODUCT, "quantity": 1}]}
            return ("POST", "/orders", body, {"Idempotency-Key": str(uuid.uuid4())})
        return ("GET", f"/users/{user}", None)
    return make


def post_order(port: int, key: str, user: int) -> tuple[int, dict[str, Any], str | None]:
    """POST /orders with an Idempotency-Key; returns (status, body, Idempotent-Replayed header)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"user_id": user, "items": [{"product_id": PRODUCT, "quantity": 1}]})
        conn.request("POST", "/orders", body=body, headers={"Content-Type": "application/json", "Idempotency-Key": key})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}"), response.getheader("Idempotent-Replayed")
    finally:
        conn.close()


def release_under_load(database_url: str, old_tree: Path, timing: ReleaseTiming, log_dir: Path,
                       web_env: dict[str, str] | None = None) -> ReleaseRun:
    """Run the whole release on an empty database; raises only when the release before cannot even start."""
    run = ReleaseRun()
    extra = {"SHUTDOWN_DRAIN_SECONDS": "1", "GUNICORN_GRACEFUL_TIMEOUT": "10", "GUNICORN_TIMEOUT": "5",
             **(web_env or {})}
    old_env, new_env = release_env(old_tree, database_url, **extra), release_env(PROJECT_DIR, database_url, **extra)
    run.old_package = str(imported_package(old_tree, old_env))
    run.new_package = str(imported_package(PROJECT_DIR, new_env))
    first = run_release_phase(old_tree, old_env)  # the release before, as it was deployed
    if first.returncode != 0:
        raise RuntimeError(f"the release before's own `webapp migrate` failed:\n{first.stderr[-3000:]}")
    seed(database_url, users=timing.users, products=1)
    old, new = web_process(old_tree, old_env, log_dir / "old.log"), web_process(PROJECT_DIR, new_env,
                                                                                log_dir / "new.log")
    router = Router(mixed_request(timing.users), timing.clients)
    try:
        old.start().wait_ready()
        key, key_user = str(uuid.uuid4()), 1
        status, body, _ = post_order(old.port, key, key_user)
        run.key_before = (status, body.get("id"))
        router.routes = {"old": old.port}
        router.start()
        time.sleep(timing.before)
        router.phase = "during_release_phase"
        started = time.monotonic()
        done = run_release_phase(PROJECT_DIR, new_env)
        run.release_phase_s = time.monotonic() - started
        run.release_phase_rc, run.release_phase_output = done.returncode, (done.stdout + done.stderr)[-3000:]
        router.phase = "after_release_phase"
        time.sleep(timing.after_release_phase)
        new.start().wait_ready()
        router.phase = "preboot"
        router.routes = {"old": old.port, "new": new.port}
        time.sleep(timing.preboot)
        router.phase = "old_draining"
        router.routes = {"new": new.port}  # the router lets go of the old release, then it is stopped
        run.old_exit_code = old.stop(timeout=20)
        router.phase = "after"
        time.sleep(timing.after)
        status, body, replayed = post_order(new.port, key, key_user)
        run.key_after = (status, body.get("id"), replayed)
    finally:
        run.requests = router.stop()
        new.stop()
        old.stop()
    _count_orders(database_url, run)
    return run


def _count_orders(database_url: str, run: ReleaseRun) -> None:
    """Every 201 (the load's and the first use of the key) against the orders table."""
    run.created_ids = {r.outcome.json()["id"] for r in run.requests if r.method == "POST" and r.outcome.status == 201}
    if run.key_before[0] == 201 and run.key_before[1] is not None:
        run.created_ids.add(run.key_before[1])
    with psycopg.connect(database_url, autocommit=True) as conn:
        run.stored_ids = {row[0] for row in conn.execute("SELECT id FROM orders")}
    run.orders_stored = len(run.stored_ids)
