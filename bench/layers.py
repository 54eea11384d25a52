"""`python -m bench.layers`: CPU per GET /users/<id>, in-process, for the baseline and each variant.

No wrk and no gunicorn: each variant runs in a child process that calls the WSGI app directly
N times against the bench database, and reports CPU microseconds per request (time.process_time)
of its cheapest batch of 100, the minimum again over interleaved rounds.
That figure is immune to what else runs on the 2 cores, unlike rps, so layer costs show clearly.
Logs go to a real file, metrics to a real multiprocess folder, as in production.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.servers import SCRATCH_DIR
from bench.variants import TRACING_VARIANTS, VARIANTS


def child(spec: str, requests: int, users: int, cprofile: bool) -> dict[str, Any]:
    """Build the app named by spec and time `requests` GET /users/<random id> calls."""
    from gunicorn.util import (
        import_app,  # the same loader gunicorn uses for 'module:factory(args)'
    )
    from werkzeug.test import EnvironBuilder

    app = import_app(spec)
    rng = random.Random(1)
    environs = [
        EnvironBuilder(path=f"/users/{rng.randint(1, users)}").get_environ()
        for _ in range(requests + 200)
    ]

    def call(environ: dict[str, Any]) -> None:
        status: list[str] = []
        body = app(dict(environ), lambda s, h, e=None: status.append(s))
        b"".join(body)
        if not status[0].startswith("200"):
            raise RuntimeError(f"{spec}: {status[0]}")

    for environ in environs[
        :200
    ]:  # warm-up: pool connections, prepared statements, caches
        call(environ)
    profiler = None
    if cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    # Batches of 100: the cheapest batch is the one least disturbed by other processes on the
    # shared cores (a whole-run average would price the neighbours too).
    cpu = wall = float("inf")
    measured = environs[200:]
    for start in range(0, len(measured), 100):
        batch = measured[start : start + 100]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for environ in batch:
            call(environ)
        cpu = min(cpu, (time.process_time() - cpu0) / len(batch))
        wall = min(wall, (time.perf_counter() - wall0) / len(batch))
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    return {"cpu_us": cpu * 1e6, "wall_us": wall * 1e6}


def child_env(database_url: str, metrics_dir: str) -> dict[str, str]:
    """The environment of a child: production logging and multiprocess metrics, no cache."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "info",
        "REDIS_URL": "",
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }


def child_command(spec: str, requests: int, users: int) -> list[str]:
    """The command that runs `child` for spec (bench.instructions runs it under valgrind)."""
    return [sys.executable, "-m", "bench.layers", "--child", spec, "--requests", str(requests), "--users", str(users)]


def run_child(
    spec: str, args: argparse.Namespace, cprofile: bool = False
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="layers-", dir=SCRATCH_DIR) as tmp,
        open(os.path.join(tmp, "app.log"), "w") as log,
    ):
        out = subprocess.run(
            child_command(spec, args.requests, args.users) + (["--cprofile"] if cprofile else []),
            env=child_env(args.database_url, tmp),
            stdout=subprocess.PIPE,
            stderr=None if cprofile else log,
            text=True,
            check=True,
            timeout=300,
        )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.layers", description=__doc__)
    p.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/webapp_bench",
        help="a database seeded by bench.run or bench.profile",
    )
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--cprofile",
        action="store_true",
        help="print the full service's top functions (to stderr)",
    )
    p.add_argument(
        "--variants", default=",".join(v for v in VARIANTS if v not in TRACING_VARIANTS),
        help=f"comma-separated subset of {', '.join(VARIANTS)}"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if not args.cprofile:
            # The app's JSON log handler writes to stdout; keep stdout for the one result line.
            sys.stdout, real = sys.stderr, sys.stdout
        else:
            real = sys.stdout
        result = child(args.child, args.requests, args.users, args.cprofile)
        print(json.dumps(result), file=real)
        return 0
    rows: dict[str, list[dict[str, Any]]] = {
        name: [] for name in args.variants.split(",")
    }
    for round_no in range(args.rounds):
        for name, spec in ((n, VARIANTS[n]) for n in rows):
            rows[name].append(run_child(spec, args))
            print(
                f"round {round_no + 1} {name:26} {rows[name][-1]['cpu_us']:6.0f} us CPU/request",
                flush=True,
            )
    # The minimum over rounds: the run least disturbed by whatever else shares the cores
    # (the usual microbenchmark estimator); the median is printed beside it.
    base = min(r["cpu_us"] for r in rows["baseline"])
    full = min(r["cpu_us"] for r in rows["ours"])
    print(
        f"\n{'variant':26} {'min us CPU/req':>14} {'median':>7} {'vs baseline':>12} {'saved vs ours':>14}"
    )
    for name, runs in rows.items():
        cpu = min(r["cpu_us"] for r in runs)
        median = statistics.median(r["cpu_us"] for r in runs)
        print(
            f"{name:26} {cpu:14.0f} {median:7.0f} {cpu - base:+12.0f} {full - cpu:14.0f}"
        )
    if args.cprofile:
        run_child(VARIANTS["ours"], args, cprofile=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
