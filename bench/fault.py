"""`python -m bench.fault [--short] [scenario ...]`: inject faults under load and check the contracts.

Everything runs on loopback against processes the suite starts itself (its own Postgres and Redis
on their own ports, a fresh gunicorn per scenario), is bounded in time, and is stopped at the end.
Each scenario prints its numbers and PASS or FAIL; the exit status is 1 if any contract was broken.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import cluster_scenarios as c
from bench import queue_scenario as q
from bench import release_scenarios as r
from bench import scenarios as s
from bench.faultenv import FULL, SHORT, FaultEnv, Verdict

SCENARIOS: dict[str, Callable[[FaultEnv], Verdict]] = {
    "sighup": s.sighup_under_load,
    "sigterm": s.sigterm_under_load,
    "postgres_restart": s.postgres_restart_under_load,
    "database_link_frozen": s.database_link_frozen_under_load,
    "redis_killed": s.redis_killed_under_load,
    "worker_killed": s.worker_killed_under_load,
    "oversell": s.concurrent_orders_never_oversell,
    # Through the deployed topology: nginx, 3 instances x 2 workers, PgBouncer in transaction mode.
    "cluster_rolling_restart": c.rolling_restart_under_load,
    "cluster_instance_killed": c.instance_killed_under_load,
    "cluster_pgbouncer_paused": c.pgbouncer_paused_under_load,
    "cluster_slow_clients": c.slow_clients_behind_nginx,
    # A release that changes the schema (issue 19): the release before under load through the release phase.
    "release_with_schema_change": r.release_with_schema_change,
    "migration_lock_probe": r.migration_lock_probe,
    # nginx → 1 instance × 2 workers: a locked row, a burst of orders; X-Request-Start stripped, then honoured.
    "queue_time_row_lock": q.queue_time_row_lock,
}


def main(argv: list[str]) -> int:
    all_scenarios = SCENARIOS
    p = argparse.ArgumentParser(prog="python -m bench.fault", description=__doc__)
    p.add_argument(
        "--short",
        action="store_true",
        help="CI mode: shorter phases (about a minute in all)",
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="scenario",
        help=f"run only these (default all): {', '.join(all_scenarios)}",
    )
    args = p.parse_args(argv)
    unknown = set(args.names) - set(all_scenarios)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    started = time.monotonic()
    verdicts: list[Verdict] = []
    with tempfile.TemporaryDirectory(prefix="webapp-fault-") as tmp:
        env = FaultEnv(SHORT if args.short else FULL, Path(tmp))
        try:
            for name in args.names or list(all_scenarios):
                verdict = all_scenarios[name](env)
                verdicts.append(verdict)
                print(verdict, flush=True)
        finally:
            env.close()
    failed = [v.name for v in verdicts if not v.passed]
    print(
        f"\n{len(verdicts) - len(failed)}/{len(verdicts)} scenarios kept their contract "
        f"in {time.monotonic() - started:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
