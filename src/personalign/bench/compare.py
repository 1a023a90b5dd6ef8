"""Fermi and FSPO side by side on the same users and test questions.

Both reports hold one prediction row per (user, question): the Fermi benchmark's
``predictions.jsonl`` (``correct``) and the FSPO evaluation's (``choice_correct``). Rows are
joined on (user_id, qid) and only the pairs that every method answered are kept, so each
accuracy below is over the same questions. Accuracy is the macro average over users, as in
protocol opinionqa-individual, with a 95% bootstrap CI; differences are paired over users.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from personalign.bench.report import LABELS, _md
from personalign.runtime.errors import DataError
from personalign.runtime.metrics import mean_ci, paired_bootstrap_ci
from personalign.runtime.storage import atomic_write_text


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError("predictions file not found", path=str(path))
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON: {e.msg}", path=str(path), line=n) from None
    return rows


def fermi_predictions(report: Path) -> pd.DataFrame:
    rows = _read_jsonl(Path(report) / "predictions.jsonl")
    return pd.DataFrame([{"user_id": r["user_id"], "qid": r["qid"],
                          "method": LABELS.get(r["method"], r["method"]),
                          "correct": float(r["correct"])} for r in rows])


def fspo_predictions(report: Path, prefix: str = "FSPO eval: ") -> pd.DataFrame:
    rows = _read_jsonl(Path(report) / "predictions.jsonl")
    missing = [n for n, r in enumerate(rows, 1) if r.get("choice_correct") is not None
               and not r.get("qid")]
    if missing:
        raise DataError("prediction rows without qid (re-run the evaluation)",
                        path=str(Path(report) / "predictions.jsonl"), line=missing[0],
                        field="qid")
    return pd.DataFrame([{"user_id": r["user_id"], "qid": r["qid"],
                          "method": prefix + r["method"], "correct": float(r["choice_correct"])}
                         for r in rows if r.get("choice_correct") is not None])


def compare(fermi_report: Path, fspo_report: Path, out: Path,
            baseline: str = "Fermi") -> dict:
    """Joined table, per-method accuracy, paired differences against ``baseline``; writes
    compare.csv, per_method.csv/.md, paired.csv/.md and README.md in ``out``."""
    frame = pd.concat([fermi_predictions(fermi_report), fspo_predictions(fspo_report)])
    frame = frame.drop_duplicates(["user_id", "qid", "method"])
    methods = list(dict.fromkeys(frame["method"]))
    wide = frame.pivot(index=["user_id", "qid"], columns="method", values="correct")
    wide = wide[methods].dropna()
    if wide.empty:
        raise DataError("the two reports share no (user, question) answered by every method")
    per_user = wide.groupby(level="user_id").mean()
    table = []
    for m in methods:
        mean, lo, hi = mean_ci(per_user[m].tolist())
        table.append({"method": m, "accuracy": round(100 * mean, 1),
                      "ci_low": round(100 * lo, 1), "ci_high": round(100 * hi, 1),
                      "users": len(per_user), "questions": len(wide)})
    paired = []
    if baseline in per_user:
        for m in methods:
            if m == baseline:
                continue
            d, lo, hi = paired_bootstrap_ci(per_user[m].tolist(), per_user[baseline].tolist())
            paired.append({"method": m, "minus": baseline, "diff": round(100 * d, 1),
                           "ci_low": round(100 * lo, 1), "ci_high": round(100 * hi, 1)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wide.reset_index().to_csv(out / "compare.csv", index=False)
    per_method, paired_df = pd.DataFrame(table), pd.DataFrame(paired)
    per_method.to_csv(out / "per_method.csv", index=False)
    paired_df.to_csv(out / "paired.csv", index=False)
    readme = (f"# Fermi vs FSPO on the same users and questions\n\n"
              f"Fermi report: `{fermi_report}`  \nFSPO report: `{fspo_report}`  \n"
              f"{len(per_user)} users, {len(wide)} (user, question) pairs answered by every "
              "method. Accuracy (%) is the macro average over users with a 95% bootstrap "
              "CI.\n\n" + _md(per_method) + "\n\n## Paired differences over users (points)\n\n"
              + (_md(paired_df) if paired else "(no baseline)") + "\n")
    atomic_write_text(out / "README.md", readme)
    return {"per_method": table, "paired": paired, "users": len(per_user),
            "questions": len(wide), "out": str(out)}
