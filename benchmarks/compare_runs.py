"""Methods of several benchmark run folders side by side, paired over the users they share.

    python benchmarks/compare_runs.py runs/quick12:fermi \
        runs/i24/levers12/continuation:fermi=continuation runs/quick12:vanilla

Each argument is FOLDER:METHOD[=LABEL] (the method spec as the folder's ``results.jsonl``
names it). The first is the reference: every other row gets its paired difference from it
over the users present in all folders (percentile bootstrap over users, as the report's
paired CIs), the share of questions where its answer differs from the reference's, and its
most frequent answer letter. Accuracy is per user, then the mean over users, as in reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from personalign.bench.report import top_share
from personalign.runtime.metrics import mean_ci, paired_bootstrap_ci


def load(arg: str) -> tuple[str, pd.DataFrame]:
    folder, _, rest = arg.rpartition(":")
    method, _, label = rest.partition("=")
    path = Path(folder) / "results.jsonl"
    if not folder or not path.is_file():
        raise SystemExit(f"{arg}: no {path} (FOLDER:METHOD[=LABEL], the run finished once)")
    with path.open() as stream:
        rows = [json.loads(line) for line in stream if line.strip()]
    frame = pd.DataFrame([r for r in rows if r["method"] == method])
    if frame.empty:
        raise SystemExit(f"{arg}: method {method!r} not in {path}")
    return label or f"{Path(folder).name}:{method}", frame.set_index(["user_id", "qid"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="FOLDER:METHOD[=LABEL]; the first is the reference")
    args = parser.parse_args()
    loaded = [load(a) for a in args.runs]
    users = sorted(set.intersection(*(set(f.index.get_level_values(0)) for _, f in loaded)))
    if not users:
        raise SystemExit("no user is in every run")
    ref_label, ref = loaded[0]
    ref = ref.loc[users]
    ref_acc = ref.groupby(level=0)["correct"].mean().reindex(users)
    print(f"{len(users)} users in every run; reference: {ref_label}\n")
    print("| method | accuracy [95% CI] | minus reference [95% CI] | answers differ | top letter |")
    print("|---|---|---|---|---|")
    for i, (label, frame) in enumerate(loaded):
        frame = frame.loc[users]
        acc = frame.groupby(level=0)["correct"].mean().reindex(users)
        mean, lo, hi = mean_ci(acc.to_numpy())
        letter, share = top_share(frame["choice"].dropna().tolist())
        if i == 0:
            diff, differs = "-", "-"
        else:
            d, dlo, dhi = paired_bootstrap_ci(acc.to_numpy(), ref_acc.to_numpy())
            diff = f"{100 * d:+.1f} [{100 * dlo:+.1f}, {100 * dhi:+.1f}]"
            shared = frame.index.intersection(ref.index)
            differs = f"{100 * (frame.loc[shared, 'choice'] != ref.loc[shared, 'choice']).mean():.0f}%"
        print(f"| {label} | {100 * mean:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | {diff} | "
              f"{differs} | {letter} {100 * share:.0f}% |")


if __name__ == "__main__":
    main()
