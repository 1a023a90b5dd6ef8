"""Choice scoring modes side by side: does a correction of the small model's prior let the
prompt show?

    PERSONALIGN_THREADS=1 python benchmarks/scoring_modes.py \
        --data ../shared/data/opinionqa/dev.jsonl --users 12 --out runs/scoring_modes.json

Per dev user, the protocol split (``protocol_order``: the first 20 opinions are the shots, the
next 30 the test questions; users with fewer than 25 opinions are skipped). For every scoring
mode (``ScoringMethod``), three prompt-level baselines answer the test questions with the
embedded Gemma 3 270M: vanilla (task instruction), profile prompt, few-shot (3 retrieved
shots). Reported per mode, macro-averaged over users with bootstrap CIs: accuracy per
baseline; the share of the most frequent chosen letter next to the same share of the users'
own answers; the share of answers flipped between vanilla and profile (a mode that listens to
the prompt flips some); seconds and engine passes per scored item.

Time and passes per item come from the first ``--cold-users`` users, scored with the call
cache off (every mode pays for all its passes). Later users share a temporary call cache, so
a correction reuses the plain letter passes an earlier mode ran (the results are the same,
the cache only saves time on a small shared CPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from personalign.runtime.prompts import (
    TASK_INSTRUCTION,
    choice_item,
    fewshot_items,
    profile_prompt,
)
from personalign.runtime.data.opinionqa import load_opinionqa, profile_text
from personalign.runtime.data.splits import protocol_order
from personalign.runtime.embeddings import Embedder
from personalign.runtime.llm.cache import CallCache
from personalign.runtime.llm.transformers_backend import TransformersLLM
from personalign.runtime.metrics import mean_ci, paired_bootstrap_ci

MODES = ("letter", "letter-pride", "letter-pride-prefix", "letter-calibrated",
         "text", "text-mean", "text-char", "text-pmi")
BASELINES = ("vanilla", "profile", "fewshot")
N_SHOTS, N_TEST, MIN_OPINIONS, FEWSHOT_K = 20, 30, 25, 3


def top_share(choices) -> float:
    """Share of the most frequent answer position (unparsed answers count as their own)."""
    return Counter(choices).most_common(1)[0][1] / len(choices)


def prompt_predictions(llm, prompt: str, questions, method: str) -> list[int | None]:
    """Every question answered with one fixed prompt as the shared prefix."""
    results = llm.score_choices([choice_item(prompt, q) for q in questions], method=method)
    return [r.choice for r in results]


def run_user(llm, embedder, user, modes, seed: int, cold: bool) -> dict:
    ops = protocol_order(user, seed)
    shots, test = ops[:N_SHOTS], ops[N_SHOTS:N_SHOTS + N_TEST]
    gold = [q.answer for q in test]
    few = fewshot_items(shots, test, k=FEWSHOT_K, embedder=embedder)
    record = {"user_id": user.user_id, "n_test": len(test), "gold_top_share": top_share(gold),
              "cold": cold, "modes": {}}
    for mode in modes:
        start, calls = time.perf_counter(), llm.usage.calls
        preds = {
            "vanilla": prompt_predictions(llm, TASK_INSTRUCTION, test, method=mode),
            "profile": prompt_predictions(llm, profile_prompt(profile_text(user.profile)),
                                          test, method=mode),
            "fewshot": [r.choice for r in llm.score_choices(few, method=mode)],
        }
        seconds = time.perf_counter() - start
        record["modes"][mode] = {
            "predictions": preds,
            "accuracy": {b: float(np.mean([p == g for p, g in zip(preds[b], gold)]))
                         for b in BASELINES},
            "top_share": float(np.mean([top_share(preds[b]) for b in BASELINES])),
            "flipped": float(np.mean([a != b for a, b in zip(preds["vanilla"],
                                                             preds["profile"])])),
            "seconds_per_item": seconds / (len(BASELINES) * len(test)),
            "passes_per_item": (llm.usage.calls - calls) / (len(BASELINES) * len(test)),
            "cold": cold,
        }
    return record


def summarize(records: list[dict], modes) -> dict:
    """Macro averages over users with bootstrap CIs; paired CIs of each mode minus letter."""
    summary = {"users": len(records),
               "gold_top_share": mean_ci([r["gold_top_share"] for r in records])}
    for mode in modes:
        per = [r["modes"][mode] for r in records]
        row = {b: mean_ci([p["accuracy"][b] for p in per]) for b in BASELINES}
        row["mean_of_baselines"] = mean_ci([np.mean(list(p["accuracy"].values())) for p in per])
        row["profile_minus_vanilla"] = paired_bootstrap_ci(
            [p["accuracy"]["profile"] for p in per], [p["accuracy"]["vanilla"] for p in per])
        row["fewshot_minus_vanilla"] = paired_bootstrap_ci(
            [p["accuracy"]["fewshot"] for p in per], [p["accuracy"]["vanilla"] for p in per])
        if mode != "letter" and "letter" in modes:
            base = [r["modes"]["letter"] for r in records]
            row["minus_letter"] = paired_bootstrap_ci(
                [np.mean(list(p["accuracy"].values())) for p in per],
                [np.mean(list(p["accuracy"].values())) for p in base])
        for key in ("top_share", "flipped"):
            row[key] = mean_ci([p[key] for p in per])
        for key in ("seconds_per_item", "passes_per_item"):  # cold users only
            row[key] = mean_ci([p[key] for p in per if p["cold"]])
        summary[mode] = row
    return summary


def _ci(v, scale=100.0, digits=1) -> str:
    mean, low, high = (x * scale for x in v)
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(summary: dict, modes) -> str:
    lines = [(f"{summary['users']} dev users x {N_TEST} test questions; users' own top-answer "
              f"share {_ci(summary['gold_top_share'])}%"), "",
             ("| mode | vanilla | profile | few-shot | mean | profile - vanilla | top letter % "
              "| flipped % | s/item | passes/item |"), "|" + "---|" * 10]
    for mode in modes:
        r = summary[mode]
        lines.append(f"| {mode} | {_ci(r['vanilla'])} | {_ci(r['profile'])} | "
                     f"{_ci(r['fewshot'])} | {_ci(r['mean_of_baselines'])} | "
                     f"{_ci(r['profile_minus_vanilla'])} | {_ci(r['top_share'])} | "
                     f"{_ci(r['flipped'])} | {r['seconds_per_item'][0]:.2f} | "
                     f"{r['passes_per_item'][0]:.2f} |")
    return "\n".join(lines)


def load_report(path: str | Path) -> dict:
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    for r in report["users"]:  # reports written before timing was kept per mode
        for p in r["modes"].values():
            p.setdefault("cold", r["cold"])
    return report


def merge(paths) -> tuple[list[dict], list[str]]:
    """The users present in every report, with the modes of all of them (runs of different
    modes on the same users and settings)."""
    reports = [load_report(p) for p in paths]
    if len({(r["settings"]["data"], r["settings"]["seed"]) for r in reports}) > 1:
        raise SystemExit("reports differ in data or seed")
    by_user = [{r["user_id"]: r for r in rep["users"]} for rep in reports]
    common = [u for u in by_user[0] if all(u in b for b in by_user)]
    modes = list(dict.fromkeys(m for rep in reports for m in rep["settings"]["modes"]))
    records = [{**by_user[0][u], "modes": {m: p for b in by_user for m, p in
                                          b[u]["modes"].items()}} for u in common]
    return records, [m for m in MODES if m in modes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/opinionqa/dev.jsonl")
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cold-users", type=int, default=1,
                    help="users timed with the call cache off")
    ap.add_argument("--out", help="JSON report; finished users are kept and a rerun with the "
                    "same settings resumes")
    ap.add_argument("--merge", nargs="+", metavar="REPORT",
                    help="print one table from reports of other modes on the same users")
    args = ap.parse_args()
    if args.merge:
        records, modes = merge(args.merge)
        print(markdown(summarize(records, modes), modes))
        return
    if not args.out:
        ap.error("--out is required")
    if "holdout" in Path(args.data).name:
        raise SystemExit("scoring modes are chosen on dev data; holdout is for acceptance only")

    out = Path(args.out)
    settings = {"data": str(Path(args.data).resolve()), "modes": args.modes, "seed": args.seed}
    done = {}
    if out.exists() and json.loads(out.read_text(encoding="utf-8"))["settings"] == settings:
        done = {r["user_id"]: r for r in load_report(out)["users"]}
    users = [u for u in load_opinionqa(args.data) if len(u.opinions) >= MIN_OPINIONS][:args.users]
    llm = TransformersLLM("gemma3-270m", cache=False)
    embedder = Embedder()
    records = []
    with tempfile.TemporaryDirectory(prefix="scoring_modes_cache_") as tmp:
        shared = CallCache(tmp)
        for i, user in enumerate(users):
            if user.user_id not in done:
                cold = sum(r["cold"] for r in done.values()) < args.cold_users
                llm.cache = None if cold else shared
                done[user.user_id] = run_user(llm, embedder, user, args.modes, args.seed, cold)
            records.append(done[user.user_id])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"settings": settings,
                                       "summary": summarize(records, args.modes),
                                       "usage": llm.usage.as_dict(), "users": records},
                                      indent=1), encoding="utf-8")
            print(f"user {i + 1}/{len(users)} {user.user_id} done", flush=True)
        shared.close()
    print(markdown(summarize(records, args.modes), args.modes))


if __name__ == "__main__":
    main()
