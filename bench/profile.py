"""`python -m bench.profile`: price each middleware layer on GET /users/<id>.

Runs the baseline, the full service and the service minus one layer at a time (bench/variants.py),
interleaved over rounds, and prints median rps and CPU per request (workers, Postgres, the whole
machine) for each. CPU per request is the steadier figure on 2 shared cores: the difference to
the baseline is what a layer costs.
With --py-spy it also records the full service's workers into bench/results/profile-ours.folded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import RESULTS_DIR
from bench.seed import recreate_database, seed
from bench.servers import Gunicorn, cpu_seconds, machine_busy_seconds, postgres_cpu_seconds
from bench.variants import TRACING_VARIANTS, VARIANTS
from bench.wrk import WrkResult, run_wrk


def get_load(target: Gunicorn, args: argparse.Namespace, seconds: int) -> WrkResult:
    """wrk's GET /users/<random id> load on target, the same in every phase."""
    return run_wrk(target.port, "get", seconds=seconds, connections=16, threads=2, users=args.users, products=10)


def measure(target: Gunicorn, args: argparse.Namespace) -> tuple[float, float, float, float, float]:
    """One wrk run; returns rps, p99 ms, and CPU microseconds per request: workers, Postgres, whole machine."""
    pids = target.worker_pids()
    before = sum(cpu_seconds(p) for p in pids)
    pg_before, machine_before = postgres_cpu_seconds(), machine_busy_seconds()
    result = get_load(target, args, args.seconds)
    used = sum(cpu_seconds(p) for p in pids) - before
    pg, machine = postgres_cpu_seconds() - pg_before, machine_busy_seconds() - machine_before
    per_request = 1e6 / max(1, result.requests)
    return result.rps, result.p99_ms, used * per_request, pg * per_request, machine * per_request


def py_spy(target: Gunicorn, args: argparse.Namespace) -> Path:
    """Sample the service's workers (100 Hz, so the profiler itself does not eat the 2 cores)."""
    assert target.proc is not None
    out = RESULTS_DIR / "profile-ours.folded"
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(target.proc.pid),
            "--subprocesses",
            "--nonblocking",
            "--format",
            "raw",
            "-r",
            "100",
            "-d",
            str(args.seconds),
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    get_load(target, args, args.seconds)
    spy.wait(30)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument(
        "--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    p.add_argument("--database", default="webapp_bench")
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--variants", default=",".join(v for v in VARIANTS if v not in TRACING_VARIANTS))
    p.add_argument(
        "--py-spy",
        action="store_true",
        help="also write a py-spy profile of the full service",
    )
    args = p.parse_args(argv)
    url = recreate_database(args.server_url, args.database)
    seed(url, users=args.users, products=10)
    env = {"DATABASE_URL": url, "LOG_LEVEL": "info", "REDIS_URL": ""}
    names = args.variants.split(",")
    # Logs to real files, as in production (and bench.run): /dev/null would hide the write cost.
    log_dir = tempfile.TemporaryDirectory(prefix="bench-profile-")
    targets = {
        n: Gunicorn(VARIANTS[n], env, log_path=Path(log_dir.name) / f"{i}.log")
        for i, n in enumerate(names)
    }
    rows: dict[str, list[tuple[float, float, float, float, float]]] = {n: [] for n in names}
    try:
        for target in targets.values():
            target.start().wait_ready()
            target.wait_workers()
            get_load(target, args, 2)  # warm-up
        for round_no in range(args.rounds):
            for name, target in targets.items():
                rows[name].append(measure(target, args))
                rps, p99, cpu, pg, machine = rows[name][-1]
                print(
                    f"round {round_no + 1} {name:12} {rps:7.0f} rps  p99 {p99:6.1f} ms  CPU us/request: "
                    f"workers {cpu:4.0f}  postgres {pg:4.0f}  machine {machine:4.0f}",
                    flush=True,
                )
        if args.py_spy and "ours" in targets:
            print(f"py-spy profile: {py_spy(targets['ours'], args)}")
    finally:
        for target in targets.values():
            target.stop()
        log_dir.cleanup()
    base_cpu = (
        statistics.median(r[2] for r in rows["baseline"])
        if "baseline" in rows
        else None
    )
    full_cpu = statistics.median(r[2] for r in rows["ours"]) if "ours" in rows else None
    # Medians of the interleaved rounds. On a saturated box rps ~ cores / machine CPU per request,
    # so "machine" is the figure that explains the rps ratio; "workers" is the Python side.
    print(
        f"\n{'variant':12} {'rps':>7} {'p99 ms':>7} {'workers us':>11} {'postgres us':>12} {'machine us':>11}"
        f" {'workers vs baseline':>20} {'saved vs ours':>14}"
    )
    for name, runs in rows.items():
        rps, p99, cpu, pg, machine = (statistics.median(r[i] for r in runs) for i in range(5))
        extra = f"{cpu - base_cpu:+20.0f}" if base_cpu is not None else ""
        saved = f"{full_cpu - cpu:14.0f}" if full_cpu is not None else ""
        print(f"{name:12} {rps:7.0f} {p99:7.1f} {cpu:11.0f} {pg:12.0f} {machine:11.0f} {extra} {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
