"""`python -m bench.instructions`: instructions per GET /users/<id>, in-process, under valgrind's callgrind.

Unlike CPU time, an instruction count does not move with whatever else runs on the cores: the
same code counts the same to ~1 %, so a change of a few per cent is visible on this noisy host.
Each variant's child (bench.layers' in-process loop, logs to a real file, multiprocess metrics)
runs twice, with 100 and 600 measured requests; the difference / 500 is the cost of one request,
with start-up and warm-up cancelled out. It ranks changes; it does not price them in µs
(callgrind weighs some C code, the JSON encoder for one, far above its share of the time).
Needs valgrind and a database seeded by bench.run or bench.profile.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from bench.layers import child_command, child_env
from bench.servers import SCRATCH_DIR
from bench.variants import TRACING_VARIANTS, VARIANTS, OtlpSink

FEW, MANY = 100, 600


def instructions(spec: str, requests: int, args: argparse.Namespace) -> int:
    """Instructions callgrind counted for one child run of `requests` measured requests."""
    with tempfile.TemporaryDirectory(prefix="instructions-", dir=SCRATCH_DIR) as tmp:
        out = os.path.join(tmp, "callgrind.out")
        with open(os.path.join(tmp, "app.log"), "w") as log:
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                 *child_command(spec, requests, args.users)],
                env={**child_env(args.database_url, tmp), **args.extra_env}, stdout=subprocess.DEVNULL, stderr=log,
                check=True, timeout=900,
            )
        with open(out) as profile:
            for line in profile:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    raise RuntimeError(f"no totals in callgrind's output for {spec}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/webapp_bench")
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--variants", default="baseline,ours", help=f"comma-separated, from {', '.join(VARIANTS)}")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    names = args.variants.split(",")
    # Tracing variants export to a sink in this process, outside valgrind: only the app's side is counted.
    sink = OtlpSink() if set(names) & set(TRACING_VARIANTS) else None
    args.extra_env = {"BENCH_OTLP_ENDPOINT": sink.endpoint} if sink else {}
    base = None
    for name in names:
        spec = VARIANTS[name]
        per_request = (instructions(spec, MANY, args) - instructions(spec, FEW, args)) // (MANY - FEW)
        base = per_request if name == "baseline" else base
        versus = f"  {per_request / base:.3f}x baseline" if base and name != "baseline" else ""
        print(f"{name:26} {per_request:9,} instructions/request{versus}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
