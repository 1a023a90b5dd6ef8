"""Which optimizer strategy makes a small optimizer's proposals win? (issue 11, section 3)

    PERSONALIGN_THREADS=1 python benchmarks/optimizer_strategies.py \
        --data ../shared/data/opinionqa/dev.jsonl --users 6 --scoring letter-pride \
        --out runs/i11/strategies

Each strategy is one benchmark run (``run_benchmark``, resumable, one folder per strategy)
of Fermi and vanilla on the same dev users and protocol split. Reported per strategy: the
share of users whose best prompt beats the initial (profile) prompt on the optimization split,
the mean gain of the best prompt there, Fermi's test accuracy and Fermi − vanilla paired over
users (95% bootstrap CI), and Fermi's seconds per user.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from personalign.bench.runner import BenchConfig, run_benchmark
from personalign.methods import MethodSettings
from personalign.runtime.metrics import mean_ci, paired_bootstrap_ci

# name -> (optimizer model, FermiConfig overrides)
STRATEGIES = {
    "meta_prompt": ("smollm2-135m-instruct", {}),
    "meta_prompt+samples6": ("smollm2-135m-instruct", {"samples_per_iteration": 6}),
    "continuation(gemma)": ("gemma3-270m", {"optimizer_strategy": "continuation"}),
    "continuation(gemma)+samples6": ("gemma3-270m", {"optimizer_strategy": "continuation",
                                                     "samples_per_iteration": 6}),
}


def summarize(records: list[dict]) -> dict:
    beats, gains, acc, van, secs = [], [], [], [], []
    for rec in records:
        history = rec["fits"]["fermi"]["history"]
        initial, best = history[0]["best_score"], history[-1]["best_score"]
        beats.append(best > initial)
        gains.append(best - initial)
        for method, into in (("fermi", acc), ("vanilla", van)):
            rows = [r for r in rec["rows"] if r["method"] == method]
            into.append(float(np.mean([r["correct"] for r in rows])))
        secs.append(rec["seconds"]["fermi"])
    diff, low, high = paired_bootstrap_ci(acc, van)
    return {"users": len(records), "beats_initial": float(np.mean(beats)),
            "opt_gain": float(np.mean(gains)), "fermi": mean_ci(acc)[0],
            "vanilla": mean_ci(van)[0], "fermi_minus_vanilla": [diff, low, high],
            "fermi_seconds_per_user": float(np.mean(secs))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--scoring", default="letter")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    args = ap.parse_args()
    table = {}
    for name in args.strategies.split(","):
        optimizer, overrides = STRATEGIES[name]
        cfg = BenchConfig(data=args.data, out=str(Path(args.out) / name), users=args.users,
                          methods=["vanilla", "fermi"], optimizer_model=optimizer,
                          scoring=args.scoring,
                          settings=MethodSettings(preset=args.preset, fermi=overrides))
        table[name] = summarize(run_benchmark(cfg).records)
        print(name, json.dumps(table[name]), flush=True)
    print(f"\n{args.users} dev users, preset {args.preset}, scoring {args.scoring}\n")
    print("| strategy | best beats initial (opt split) | mean opt gain | Fermi test acc "
          "| Fermi − vanilla [95% CI] | s/user |")
    print("|---|---|---|---|---|---|")
    for name, r in table.items():
        d, lo, hi = (100 * x for x in r["fermi_minus_vanilla"])
        print(f"| {name} | {100 * r['beats_initial']:.0f}% | {100 * r['opt_gain']:+.1f} "
              f"| {100 * r['fermi']:.1f} | {d:+.1f} [{lo:+.1f}, {hi:+.1f}] "
              f"| {r['fermi_seconds_per_user']:.0f} |")
    (Path(args.out) / "summary.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
