"""The benchmark's report folder: predictions, tables, paired CIs, plots, config and usage.

    predictions.jsonl      one row per (user, method, test question)
    per_user.csv/.md       accuracy per user and method
    per_method.csv/.md     macro accuracy over users with a 95% bootstrap CI
    paired.csv/.md         each method minus every earlier method, paired over users, 95% CI
    accuracy.png           accuracy per method with CIs
    memory_curve.png       best memory score per iteration (Fermi, OPRO; mean over users)
    usage.json             LLM calls and tokens per phase (total and per user), optimizer failures
    config.json            protocol, data, preset, models, seeds, settings, skipped users
    README.md              all of the above in one page
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from personalign.runtime.metrics import mean_ci, paired_bootstrap_ci
from personalign.runtime.storage import atomic_write_text

LABELS = {"random": "Random (expected)", "vanilla": "Vanilla", "profile": "Profile prompt",
          "fewshot": "Few-shot", "opro": "OPRO", "fermi_norop": "Fermi w/o RoP", "fermi": "Fermi"}


def _md(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (no tabulate dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(v) for v in row.tolist()) + " |")
    return "\n".join(lines)


def _sum_usage(items: list[dict]) -> dict:
    total: dict = {}
    for u in items:
        for k, v in u.items():
            if isinstance(v, dict):
                total[k] = _sum_usage([total.get(k, {}), v])
            else:
                total[k] = total.get(k, 0) + v
    return total


def _methods(records: list[dict]) -> list[str]:
    order = list(LABELS)
    found = {m for r in records for m in r["accuracy"]}
    return [m for m in order if m in found] + sorted(found - set(order))


def write_report(out: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = _methods(records)
    quick = meta.get("preset") != "paper"
    label = f" [preset: {meta.get('preset')}]" + (" (quick: smaller T and K than the paper)"
                                                    if quick else "")
    # predictions
    lines = [json.dumps(row, ensure_ascii=False) for r in records for row in r["predictions"]]
    atomic_write_text(out / "predictions.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    # per user
    per_user = pd.DataFrame([{"user_id": r["user_id"], "n_test": r["n_test"],
                              **{m: r["accuracy"].get(m, np.nan) for m in methods}}
                             for r in records])
    per_user.to_csv(out / "per_user.csv", index=False)
    shown = per_user.copy()
    for m in methods:
        shown[m] = shown[m].map(lambda v: f"{v:.3f}")
    shown.columns = ["user_id", "n_test"] + [LABELS.get(m, m) for m in methods]
    atomic_write_text(out / "per_user.md", _md(shown) + "\n")
    # per method; "top letter" = share of answers on the method's most frequent option letter
    # (a task model that ignores the prompt answers one letter everywhere)
    letters: dict[str, dict] = {m: {} for m in methods}
    for r in records:
        for row in r["predictions"]:
            if row["pred"] is not None:
                d = letters[row["method"]]
                d[row["pred"]] = d.get(row["pred"], 0) + 1
    rows = []
    for m in methods:
        mean, lo, hi = mean_ci(per_user[m].to_numpy(), seed=meta["seeds"]["global"])
        counts = letters.get(m, {})
        top = max(counts, key=counts.get) if counts else None
        rows.append({"method": m, "label": LABELS.get(m, m), "accuracy": mean, "ci_low": lo,
                     "ci_high": hi, "users": int(per_user[m].notna().sum()),
                     "top_letter": "" if top is None else chr(ord("A") + int(top)),
                     "top_letter_share": (counts[top] / sum(counts.values())) if counts
                     else float("nan")})
    per_method = pd.DataFrame(rows)
    per_method.to_csv(out / "per_method.csv", index=False)
    md_method = _md(pd.DataFrame([{"Method": r["label"],
                                   "Accuracy": f"{100 * r['accuracy']:.1f}",
                                   "95% CI": f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]",
                                   "Users": r["users"],
                                   "Top letter (share)": f"{r['top_letter']} "
                                   f"({100 * r['top_letter_share']:.0f}%)" if r["top_letter"]
                                   else "-"} for r in rows]))
    atomic_write_text(out / "per_method.md", md_method + "\n")
    # paired differences: each method minus every method listed before it
    prow = []
    for i, m in enumerate(methods):
        for b in methods[:i]:
            d, lo, hi = paired_bootstrap_ci(per_user[m].to_numpy(), per_user[b].to_numpy(),
                                            seed=meta["seeds"]["global"])
            prow.append({"method": m, "baseline": b, "diff": d, "ci_low": lo, "ci_high": hi,
                         "significant": bool(lo > 0 or hi < 0)})
    paired = pd.DataFrame(prow, columns=["method", "baseline", "diff", "ci_low", "ci_high",
                                         "significant"])
    paired.to_csv(out / "paired.csv", index=False)
    md_paired = _md(pd.DataFrame([{"Method": LABELS.get(r["method"], r["method"]),
                                   "minus": LABELS.get(r["baseline"], r["baseline"]),
                                   "Diff (points)": f"{100 * r['diff']:+.1f}",
                                   "95% CI": f"[{100 * r['ci_low']:+.1f}, "
                                             f"{100 * r['ci_high']:+.1f}]",
                                   "CI excludes 0": "yes" if r["significant"] else "no"}
                                  for r in prow])) if prow else "(one method: no pairs)"
    atomic_write_text(out / "paired.md", md_paired + "\n")
    # usage and failures
    per_user_usage = [r["usage"] for r in records]
    total_usage = _sum_usage(per_user_usage)
    n = max(1, len(records))
    calls_per_user = {k: v.get("calls", 0) / n for k, v in total_usage.items()}
    failures_by_mode = {mode: _sum_usage([r["fits"][mode].get("failures", {})
                                          for r in records if mode in r["fits"]])
                        for mode in ("fermi", "opro")}
    counts_by_mode = {mode: _sum_usage([r["fits"][mode].get("counts", {})
                                        for r in records if mode in r["fits"]])
                      for mode in ("fermi", "opro")}
    wall = [r["wall_s"] for r in records]
    step_names = sorted({k for r in records for k in r.get("seconds", {})})
    seconds_mean = {k: float(np.mean([r["seconds"].get(k, 0.0) for r in records
                                      if "seconds" in r])) for k in step_names}
    usage = {"total": total_usage, "calls_per_user": calls_per_user,
             "per_user": {r["user_id"]: r["usage"] for r in records},
             "optimizer_failures": failures_by_mode, "optimizer_counts": counts_by_mode,
             "seconds_per_user_mean": seconds_mean,
             "wall_s_per_user": {"mean": float(np.mean(wall)) if wall else 0.0,
                                 "total": float(np.sum(wall)) if wall else 0.0}}
    atomic_write_text(out / "usage.json", json.dumps(usage, indent=1) + "\n")
    atomic_write_text(out / "config.json", json.dumps({**meta, "users": len(records)}, indent=1,
                                                 default=str) + "\n")
    # best memory score per iteration (mean over users)
    curves = {}
    for mode in ("fermi", "opro"):
        series = [[h["best_score"] for h in r["fits"][mode]["history"]]
                  for r in records if mode in r["fits"]]
        if series:
            width = max(len(s) for s in series)
            arr = np.array([s + [s[-1]] * (width - len(s)) for s in series], dtype=float)
            curves[mode] = arr.mean(axis=0).tolist()
    _plots(out, per_method, curves, label)
    # README
    phase_rows = pd.DataFrame([
        {"model": model, "phase": phase, "calls": u.get("calls", 0),
         "cache hits": u.get("cache_hits", 0), "prompt tokens": u.get("prompt_tokens", 0),
         "completion tokens": u.get("completion_tokens", 0),
         "calls/user": f"{u.get('calls', 0) / n:.1f}"}
        for model, tot in total_usage.items() for phase, u in sorted(
            tot.get("by_phase", {}).items())])
    fail_rows = pd.DataFrame([{"mode": mode, **counts_by_mode[mode], **f}
                              for mode, f in failures_by_mode.items() if f])
    readme = [f"# {meta['protocol']} on {meta['data']}{label}", "",
              f"Users: {len(records)} (skipped, fewer than the minimum opinions: "
              f"{len(meta.get('skipped_users', []))}). Models: task {meta['models']['task']}, "
              f"optimizer {meta['models']['optimizer']}, embedder {meta['models']['embedder']}. "
              f"Fermi settings: T={meta['fermi_config']['iterations']}, "
              f"K={meta['fermi_config']['num_candidates']}, "
              f"L={meta['fermi_config']['memory_size']}, RoP neighbours "
              f"{meta['fermi_config']['rop_neighbors']}, seed {meta['seeds']['global']}.", "",
              "## Accuracy (macro over users, 95% bootstrap CI)", "", md_method, "",
              "## Paired differences over users (95% bootstrap CI)", "", md_paired, "",
              "## Per user", "", _md(shown), "",
              "## LLM calls and tokens per phase", "",
              _md(phase_rows) if len(phase_rows) else "(none)", "",
              f"Wall time per user: {usage['wall_s_per_user']['mean']:.1f} s (mean), "
              f"{usage['wall_s_per_user']['total']:.0f} s in all. Mean seconds per user by step: "
              + ", ".join(f"{k} {v:.0f}" for k, v in seconds_mean.items()) + ".", "",
              "## Optimizer replies and failures", "",
              _md(fail_rows) if len(fail_rows) else "(no optimizer runs)", "",
              "![accuracy](accuracy.png) ![memory](memory_curve.png)", ""]
    atomic_write_text(out / "README.md", "\n".join(readme))
    return {"per_method": rows, "paired": prow, "per_method_md": md_method,
            "paired_md": md_paired, "per_user_md": _md(shown), "usage": usage,
            "curves": curves, "label": label}


def _plots(out: Path, per_method: pd.DataFrame, curves: dict, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(per_method):
        fig, ax = plt.subplots(figsize=(8, 4))
        acc = per_method["accuracy"].to_numpy() * 100
        err = np.vstack([acc - per_method["ci_low"].to_numpy() * 100,
                         per_method["ci_high"].to_numpy() * 100 - acc])
        ax.bar(per_method["label"], acc, yerr=err, capsize=4, color="#4c72b0")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"opinionqa-individual{label}", fontsize=9)
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, curve in curves.items():
        ax.plot(range(len(curve)), [100 * c for c in curve], marker="o", label=LABELS[mode])
    ax.set_xlabel("iteration")
    ax.set_ylabel("best memory score (%)")
    ax.set_title(f"best memory score per iteration{label}", fontsize=9)
    if curves:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "memory_curve.png", dpi=120)
    plt.close(fig)
