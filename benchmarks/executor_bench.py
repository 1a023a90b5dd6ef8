"""Users per hour of `personalign bench opinionqa` with each executor, on the same dev users.

    python benchmarks/executor_bench.py --data ../shared/data/opinionqa/dev.jsonl \
        [--users 6] [--methods vanilla,profile] [--out runs/executor_bench]

Runs the benchmark command once per configuration (local 1 worker x 2 threads, local 2
workers x 1 thread, Ray 2 workers x 1 thread), each in a fresh folder with the LLM-call cache
off, so every run pays for every call and for starting its workers (model loads included).
Prints and writes (``OUT/README.md``) users per hour from the command's wall time, the scaling
efficiency of 2 workers over 1, Ray's overhead per user against local at 2 workers, and whether
each run's results.jsonl equals the first one's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = (  # label, executor, workers, threads for the whole run
    ("local 1 worker x 2 threads", "local", 1, 2),
    ("local 2 workers x 1 thread", "local", 2, 2),
    ("ray 2 workers x 1 thread", "ray", 2, 2),
)


def run(label: str, executor: str, workers: int, threads: int, args, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "personalign.cli.main", "bench", "opinionqa",
           "--data", args.data, "--out", str(out), "--users", str(args.users),
           "--methods", args.methods, "--preset", args.preset,
           "--executor", executor, "--workers", str(workers), "--threads", str(threads)]
    env = {**os.environ, "PERSONALIGN_NO_CACHE": "1"}
    start = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode != 0:
        sys.exit(f"{label} failed:\n{done.stderr[-3000:]}")
    usage = json.loads((out / "usage.json").read_text())
    return {"label": label, "command": "PERSONALIGN_NO_CACHE=1 personalign " + " ".join(cmd[3:]),
            "wall_s": wall,
            "users_per_hour": args.users * 3600 / wall,
            "compute_s_per_user": usage["wall_s_per_user"]["mean"],
            "rows": (out / "results.jsonl").read_text()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/opinionqa/dev.jsonl")
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--methods", default="vanilla,profile")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--out", default="runs/executor_bench")
    args = parser.parse_args()
    root = Path(args.out)
    results = []
    for i, (label, executor, workers, threads) in enumerate(CONFIGS):
        print(f"running {label} ...", flush=True)
        results.append(run(label, executor, workers, threads, args, root / f"run{i}"))
        print(f"  {results[-1]['wall_s']:.0f} s, {results[-1]['users_per_hour']:.0f} users/h",
              flush=True)
    one, local2, ray2 = results
    lines = [f"# Executor benchmark: {args.users} users of {args.data}, methods "
             f"{args.methods}, preset {args.preset}, call cache off", "",
             "| Configuration | Wall (s) | Users / hour | Compute s / user | Same results as "
             "the first |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['wall_s']:.0f} | {r['users_per_hour']:.0f} | "
                     f"{r['compute_s_per_user']:.1f} | {r['rows'] == one['rows']} |")
    efficiency = local2["users_per_hour"] / one["users_per_hour"]
    overhead = (ray2["wall_s"] - local2["wall_s"]) / args.users
    lines += ["", f"- Scaling efficiency, local 2 workers x 1 thread over 1 worker x 2 "
              f"threads (same cores): {efficiency:.2f}x the throughput",
              f"- Ray over local at 2 workers: {ray2['wall_s'] / local2['wall_s']:.2f}x the "
              f"wall time, {overhead:+.1f} s per user", "", "Commands:", ""]
    lines += [f"    {r['command']}" for r in results]
    text = "\n".join(lines) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
