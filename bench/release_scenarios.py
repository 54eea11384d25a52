"""Fault scenarios for a release that changes the schema (issue 19): the release before, and the lock probe."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from bench.faultenv import SHORT, FaultEnv, Verdict
from bench.lock_probe import ProbeRun, ProbeTiming, lock_probe
from bench.release_flow import ReleaseRun, ReleaseTiming, release_under_load
from bench.releases import ReleaseHistoryError, materialised, previous_release
from bench.seed import database_url, drop_database, recreate_database, seed

RELEASE_FULL = ReleaseTiming(clients=6, before=5.0, after_release_phase=6.0, preboot=4.0, after=5.0, users=1000)
RELEASE_SHORT = ReleaseTiming(clients=4, before=1.5, after_release_phase=2.0, preboot=1.5, after=1.5, users=200)
# The runner's defaults; the idle transaction outlasts several lock_timeouts, so the retries are seen.
PROBE_FULL = ProbeTiming(lock_timeout=2.0, attempts=5, idle_seconds=8.0, clients=6, before=2.0, after=2.0, users=1000)
PROBE_SHORT = ProbeTiming(lock_timeout=1.0, attempts=4, idle_seconds=2.5, clients=4, before=1.0, after=1.0)
MARGIN = 0.5  # "a little": a request's own time plus a busy two-core machine's scheduling
GET_BAR = 2.0  # issue 19's bar: no GET slower than ~2 s, whatever lock_timeout a run is given


@contextmanager
def empty_database(env: FaultEnv, name: str) -> Iterator[str]:
    """A database of its own on the suite's Postgres, not migrated; dropped at the end."""
    server = env.pg.url()
    drop_database(server, name)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(server, name)
    finally:
        drop_database(server, name)


def release_with_schema_change(env: FaultEnv) -> Verdict:
    """The release before serves mixed load through this release's release phase, preboot and its own drain."""
    v = Verdict("release_with_schema_change")
    try:
        rev = previous_release()
    except ReleaseHistoryError as exc:
        v.expect(False, f"the release before was found in git: {exc}")
        return v
    timing = RELEASE_SHORT if env.timing == SHORT else RELEASE_FULL
    with empty_database(env, "webapp_release") as url, materialised(rev) as tree:
        try:
            run = release_under_load(url, tree, timing, env.log_dir)
        except (RuntimeError, TimeoutError) as exc:  # the release before could not even start
            v.expect(False, f"the release before {rev[:10]} started: {exc}")
            return v
    v.numbers = {"release_before": rev[:10], **release_numbers(run)}
    for clause, kept in release_contract(run, str(tree)):
        v.expect(kept, clause)
    return v


def release_numbers(run: ReleaseRun) -> dict[str, object]:
    """The figures a reader wants: requests and failures per release, the release phase, the orders."""
    return {
        "requests": len(run.requests), "old_failed": len(run.failed("old")), "new_failed": len(run.failed("new")),
        "max_s": round(max((r.outcome.elapsed for r in run.requests), default=0.0), 3),
        "release_phase_s": round(run.release_phase_s, 2), "201s": len(run.created_ids),
        "orders_stored": run.orders_stored, "key_before": run.key_before, "key_after": run.key_after,
        "by_phase": run.tally(),
    }


def release_contract(run: ReleaseRun, old_tree: str) -> list[tuple[str, bool]]:
    """Each clause of the contract with whether the run kept it."""
    phases = {r.phase for r in run.requests if r.release == "old"}
    return [
        (f"the release before ran its own code (webapp from {run.old_package})", run.old_package.startswith(old_tree)),
        (f"this release's release phase succeeded (exit {run.release_phase_rc}): {run.release_phase_output[-500:]}",
         run.release_phase_rc == 0),
        ("the release before served before, during and after the release phase",
         {"before_release_phase", "after_release_phase"} <= phases),
        ("0 failed requests on the release before (every one answered 200/201)", not run.failed("old")),
        ("0 failed requests on this release", not run.failed("new") and any(r.release == "new" for r in run.requests)),
        ("the release before drained and exited 0 on SIGTERM", run.old_exit_code == 0),
        ("every 201 is stored, and only those", run.created_ids == run.stored_ids and run.orders_stored > 0),
        ("an Idempotency-Key used on the release before is replayed by this release (same order)",
         run.key_before[0] == 201 and run.key_after == (201, run.key_before[1], "true")),
    ]


def migration_lock_probe(env: FaultEnv, timing: ProbeTiming | None = None) -> Verdict:
    """An ALTER TABLE users waiting behind an idle transaction stalls no GET longer than lock_timeout."""
    timing = timing or (PROBE_SHORT if env.timing == SHORT else PROBE_FULL)
    v = Verdict("migration_lock_probe")
    name = "webapp_lock_probe"
    url = recreate_database(env.pg.url(), name)
    try:
        seed(url, users=timing.users, products=1)
        # The production deadlines, not the suite's short ones: a GET waiting on the lock shows as latency.
        deadlines = {"REQUEST_TIMEOUT": "10", "GUNICORN_TIMEOUT": "15", "GUNICORN_GRACEFUL_TIMEOUT": "20"}
        with env.service("migration_lock_probe", DATABASE_URL=url, **deadlines) as service:
            service.wait_ready()
            run = lock_probe(url, service.port, timing)
        with psycopg.connect(url) as conn:
            added = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'users'"
                                 " AND column_name = 'probe_note'").fetchone() is not None
    finally:
        drop_database(env.pg.url(), name)
    v.numbers = {"lock_timeout_s": timing.lock_timeout, "attempts": timing.attempts, **run.summary(),
                 "error": run.error.fields if run.error else None}
    for clause, kept in probe_contract(run, timing, added):
        v.expect(kept, clause)
    return v


def probe_contract(run: ProbeRun, timing: ProbeTiming, column_added: bool) -> list[tuple[str, bool]]:
    """Each clause of the lock probe's contract with whether the run kept it."""
    bound = min(timing.lock_timeout, GET_BAR) + MARGIN
    applied_after_idle = bool(run.applied) and run.migration_ended >= run.idle_ended and column_added
    return [
        ("GETs ran while the migration waited (> 10)", len(run.during) > 10),
        ("0 failed GETs", not run.failed()),
        (f"no GET slower than lock_timeout (at most {GET_BAR:g} s) + {MARGIN:g} s = {bound:g} s "
         f"(max {run.max_latency:.2f} s)",
         run.max_latency < bound),
        ("the migration applied once the idle session ended, or failed naming users and the idle session",
         applied_after_idle or run.error_names_the_lock()),
    ]
