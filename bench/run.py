"""`python -m bench.run`: the service under gunicorn against the bare baseline, same run, same data.

Rounds alternate (baseline, ours, ours+cache, baseline, ...) because this machine's figures drift
±8% from run to run: only medians of interleaved rounds are comparable. Results go to stdout,
bench/results/<timestamp>.json, bench/results/latest.json and a PNG beside them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.seed import prime_user_cache, recreate_database, reset_orders, seed
from bench.servers import BASELINE_APP, OURS_APP, Gunicorn, rss_mib
from bench.wrk import WrkResult, run_wrk

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCENARIOS = {"get_user": "get", "post_order": "post", "mixed": "mixed"}
# The bar (cache off): GET rps >= 0.80x baseline with the JSON request line on, GET p99 <= 1.5x baseline.
TARGET_RPS_RATIO = 0.80
TARGET_P99_RATIO = 1.5


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument(
        "--server-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="Postgres admin URL; the bench database is created on this server",
    )
    p.add_argument(
        "--database",
        default="webapp_bench",
        help="name of the bench database (dropped and recreated)",
    )
    p.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="Redis for the cache-on runs ('' = skip)",
    )
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--products", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument(
        "--write-percent",
        type=int,
        default=20,
        help="share of POST /orders in the mixed profile",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of " + ",".join(SCENARIOS),
    )
    return p.parse_args(argv)


def start_servers(
    args: argparse.Namespace, url: str, log_dir: Path
) -> dict[str, Gunicorn]:
    """Start each target in turn (not together, so boot-to-ready is not measured under contention)."""
    targets = {
        "baseline": Gunicorn(BASELINE_APP, {"DATABASE_URL": url}, workers=args.workers),
        # Production settings: JSON log lines to a file, multiprocess metrics, request ids, deadline,
        # and the default DB_PREPARED_STATEMENTS=auto: straight to Postgres here, so psycopg prepares
        # a statement used 5 times, as the baseline's driver does (through a pooler it would not).
        "ours": Gunicorn(
            OURS_APP,
            {"DATABASE_URL": url, "LOG_LEVEL": "info", "REDIS_URL": ""},
            workers=args.workers,
            log_path=log_dir / "ours.log",
        ),
        # The same with server-side prepared statements off, as every connection through a
        # transaction pooler has them: the price of that setting, beside the middleware's.
        "ours_no_prepares": Gunicorn(
            OURS_APP,
            {"DATABASE_URL": url, "LOG_LEVEL": "info", "REDIS_URL": "", "DB_PREPARED_STATEMENTS": "false"},
            workers=args.workers,
            log_path=log_dir / "ours_no_prepares.log",
        ),
    }
    if args.redis_url:
        primed = prime_user_cache(args.redis_url, url)
        print(
            f"primed the Redis cache with {primed} users (a warm cache; see bench/README.md)",
            flush=True,
        )
        targets["ours_cache"] = Gunicorn(
            OURS_APP,
            {"DATABASE_URL": url, "LOG_LEVEL": "info", "REDIS_URL": args.redis_url},
            workers=args.workers,
            log_path=log_dir / "ours_cache.log",
        )
    for target in targets.values():
        target.start().wait_ready()
        target.wait_workers()
    return targets


def run_rounds(
    args: argparse.Namespace, targets: dict[str, Gunicorn]
) -> dict[str, dict[str, list[WrkResult]]]:
    """Every scenario, `rounds` times, targets interleaved within each round."""
    load = {
        "connections": args.connections,
        "threads": args.threads,
        "users": args.users,
        "products": args.products,
        "write_percent": args.write_percent,
    }
    for target in (
        targets.values()
    ):  # warm-up: imports, pool connections, Postgres caches, Redis cache
        run_wrk(target.port, "get", seconds=3, **load)
    results: dict[str, dict[str, list[WrkResult]]] = {}
    for scenario in args.scenarios.split(","):
        mode = SCENARIOS[scenario]
        names = [n for n in targets if n not in ("ours_cache", "ours_no_prepares") or scenario == "get_user"]
        results[scenario] = {name: [] for name in names}
        for round_no in range(1, args.rounds + 1):
            for name in names:
                result = run_wrk(targets[name].port, mode, seconds=args.seconds, **load)
                results[scenario][name].append(result)
                print(
                    f"  {scenario:10} round {round_no} {name:10} {result.rps:8.0f} rps  p50 {result.p50_ms:6.2f} ms"
                    f"  p99 {result.p99_ms:7.2f} ms  errors {result.errors}",
                    flush=True,
                )
    return results


def summarise(results: dict[str, dict[str, list[WrkResult]]]) -> dict[str, Any]:
    """Median of the rounds per scenario and target, and the ratios ours/baseline."""
    summary: dict[str, Any] = {}
    for scenario, by_target in results.items():
        rows: dict[str, Any] = {}
        for name, runs in by_target.items():
            rows[name] = {
                "rps": statistics.median(r.rps for r in runs),
                "p50_ms": statistics.median(r.p50_ms for r in runs),
                "p99_ms": statistics.median(r.p99_ms for r in runs),
                "errors": sum(r.errors for r in runs),
                "requests": sum(r.requests for r in runs),
                "rounds": [r.as_dict() for r in runs],
            }
        base = rows["baseline"]
        for name, row in rows.items():
            if name != "baseline":
                row["rps_ratio"] = row["rps"] / base["rps"]
                row["p99_ratio"] = row["p99_ms"] / base["p99_ms"]
                # Reported beside the target figure, never instead of it: each round's own ratio
                # (both targets ran back to back, under the same neighbours), then the median.
                row["paired_rps_ratios"] = [
                    mine.rps / theirs.rps for mine, theirs in zip(by_target[name], by_target["baseline"], strict=True)
                ]
                row["paired_rps_ratio"] = statistics.median(row["paired_rps_ratios"])
        summary[scenario] = rows
    return summary


def check_targets(summary: dict[str, Any]) -> dict[str, bool]:
    get = summary.get("get_user")
    if not get:
        return {}
    checks = {
        "get_rps_ratio_ge_0.80": get["ours"]["rps_ratio"] >= TARGET_RPS_RATIO,
        "get_p99_ratio_le_1.5": get["ours"]["p99_ratio"] <= TARGET_P99_RATIO,
    }
    if "ours_cache" in get:
        checks["get_cache_faster_than_baseline"] = get["ours_cache"]["rps_ratio"] > 1.0
    checks["no_errors"] = all(
        row["errors"] == 0 for rows in summary.values() for row in rows.values()
    )
    return checks


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\n{'scenario':12} {'target':13} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'rps x':>7} {'p99 x':>7} {'paired rps x (per round)':>26}"
    )
    for scenario, rows in summary.items():
        for name, row in rows.items():
            ratios = (
                f"{row['rps_ratio']:7.3f} {row['p99_ratio']:7.2f}"
                f"   {row['paired_rps_ratio']:.2f} ({', '.join(f'{r:.2f}' for r in row['paired_rps_ratios'])})"
                if "rps_ratio" in row
                else f"{'':7} {'':7}"
            )
            print(
                f"{scenario:12} {name:13} {row['rps']:8.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f}"
                f" {row['errors']:7d} {ratios}"
            )


def plot(summary: dict[str, Any], path: Path) -> None:
    """Bar chart of median rps per scenario and target (matplotlib, the bench extra)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    names = ["baseline", "ours", "ours_no_prepares", "ours_cache"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.2
    for i, name in enumerate(names):
        xs = [s for s, rows in enumerate(summary.values()) if name in rows]
        ys = [rows[name]["rps"] for rows in summary.values() if name in rows]
        ax.bar([x + (i - 1.5) * width for x in xs], ys, width, label=name)
    ax.set_xticks(range(len(summary)), list(summary))
    ax.set_ylabel("requests/s (median of rounds)")
    ax.set_title("webapp vs bare Flask baseline, gunicorn sync x4, loopback")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    print(
        f"seeding {args.users} users, {args.products} products in database {args.database!r}",
        flush=True,
    )
    url = recreate_database(args.server_url, args.database)
    seed(url, users=args.users, products=args.products)
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as log_dir:
        targets = start_servers(args, url, Path(log_dir))
        try:
            boot = {name: t.boot_to_ready for name, t in targets.items()}
            reset_orders(url)
            results = run_rounds(args, targets)
            rss = {
                name: [round(rss_mib(pid), 1) for pid in t.worker_pids()]
                for name, t in targets.items()
            }
        finally:
            codes = {name: t.stop() for name, t in targets.items()}
        log_lines = {
            p.stem: sum(1 for _ in p.open("rb")) for p in Path(log_dir).glob("*.log")
        }
    summary = summarise(results)
    checks = check_targets(summary)
    print_table(summary)
    print(f"\nRSS per worker after load (MiB): {rss}")
    print(
        f"boot to first 200 from /readyz (s): { {k: round(v or 0, 3) for k, v in boot.items()} }"
    )
    print(f"JSON log lines written by ours: {log_lines}; exit codes: {codes}")
    print(f"targets: {checks}")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    report = {
        "timestamp": stamp,
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "note": "wrk and all servers share the same cores",
        },
        "settings": {k: v for k, v in vars(args).items() if k != "server_url"},
        "summary": summary,
        "targets": checks,
        "rss_mib_per_worker": rss,
        "boot_to_ready_s": boot,
        "log_lines": log_lines,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    for name in (f"{stamp}.json", "latest.json"):
        (RESULTS_DIR / name).write_text(json.dumps(report, indent=2) + "\n")
    plot(summary, RESULTS_DIR / "latest.png")
    print(f"wrote {RESULTS_DIR / (stamp + '.json')}, latest.json and latest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
