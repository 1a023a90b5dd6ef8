"""The one report writer: every protocol and method, from one long results table.

    results.jsonl          one row per (user, question, method): choice, correct, option scores
    summary.json           the run's meta and, per user and method, numbers only (metric means,
                           answer-letter counts, fit counts, LLM cost): every file below is
                           written from it, and ``bench pool`` writes one report from several
    per_user.csv/.md       accuracy per user and method
    per_method.csv/.md     macro accuracy over users with a 95% bootstrap CI, top-letter share,
                           answers that differ from vanilla's, users whose prompt pool collapsed
    paired.csv/.md         each method minus every earlier method, paired over users, 95% CI
    accuracy.png           accuracy per method with CIs
    memory_curve.png       best memory score per iteration (prompt optimizers; mean over users)
    usage.json             LLM calls, tokens and seconds per model and phase; optimizer failures
    config.json            protocol, data, models, methods, settings, seeds, skipped users
    README.md              all of the above on one page

Other per-question metrics in the rows (``logp_correct``, ``reward_correct``,
``distribution_similarity``) get their own macro column in the method table.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from personalign.runtime.errors import ConfigError
from personalign.runtime.metrics import mean_ci, paired_bootstrap_ci
from personalign.runtime.storage import atomic_write, atomic_write_text

#: summary.json's layout version (bench pool refuses others)
SUMMARY_FORMAT = 1

#: per-question 0/1 metrics a row may carry, and what the report calls them
METRICS = {"correct": "Accuracy", "logp_correct": "Log-prob accuracy",
           "reward_correct": "Reward accuracy",
           # not 0/1: 1 - normalized W1 to the population's distribution (GlobalOpinionQA)
           "distribution_similarity": "1 - W1/(n-1)"}


def markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(False)]
    return "\n".join(lines)


def sum_usage(items: Sequence[dict]) -> dict:
    """Field-wise sum of nested usage dicts."""
    total: dict = {}
    for u in items:
        for k, v in u.items():
            total[k] = sum_usage([total.get(k, {}), v]) if isinstance(v, dict) \
                else total.get(k, 0) + v
    return total


def _write_csv(path: Path, frame: pd.DataFrame, index: bool = False) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=index))


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def _key(metric: str) -> str:
    return "accuracy" if metric == "correct" else metric.replace("_correct", "_accuracy")


def _letter(i) -> str:
    return chr(ord("A") + int(i))


def top_share(values: Sequence) -> tuple[str, float]:
    """The most frequent answer letter among choice indices (None skipped) and its share."""
    return _top_letter(_letter_counts(values))


def _letter_counts(values: Sequence) -> dict[str, int]:
    return dict(Counter(_letter(v) for v in values if v is not None and v == v))


def _top_letter(counts: dict[str, int]) -> tuple[str, float]:
    """The most frequent letter of ``counts`` (ties: the earlier letter) and its share."""
    total = sum(counts.values())
    if not total:
        return "", float("nan")
    letter = min(counts, key=lambda k: (-counts[k], k))
    return letter, counts[letter] / total


def _numbers(d: dict) -> dict:
    """The numbers of a nested dict (a fit's counts and failures), nothing else."""
    return {k: _numbers(v) if isinstance(v, dict) else v for k, v in d.items()
            if isinstance(v, dict) or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def summarize(record: dict[str, Any], vanilla: dict[str, Any] | None = None) -> dict[str, Any]:
    """One user's record as numbers only, all the report needs: each method's metric means,
    answer-letter counts and answers that differ from ``vanilla``'s (qid -> choice), the
    users' own answer letters, each fit's collapse, counts, failures and best scores, and the
    LLM usage and seconds. No question, answer or prompt is in it (``summary.json``)."""
    frame = pd.DataFrame(record["rows"])
    for column in ("qid", "method", "choice", "answer"):
        if column not in frame:
            frame[column] = None
    methods: dict[str, dict[str, Any]] = {}
    for spec, mine in frame.groupby("method", sort=False):
        entry: dict[str, Any] = {
            "metrics": {m: float(mine[m].mean()) for m in METRICS
                        if m in mine and mine[m].notna().any()},
            "letters": _letter_counts(mine["choice"].tolist())}
        if vanilla is not None and spec != "vanilla":
            answered = [(c, vanilla.get(q)) for q, c in zip(mine["qid"], mine["choice"])
                        if c is not None and c == c]
            entry["differs_from_vanilla"] = [sum(c != v for c, v in answered), len(answered)]
        methods[spec] = entry
    fits = {}
    for spec, fit in record["fits"].items():
        kept = {k: _numbers(fit[k]) for k in ("counts", "failures") if isinstance(fit.get(k), dict)}
        if "collapsed" in fit:
            kept["collapsed"] = bool(fit["collapsed"])
        if fit.get("history"):
            kept["best_scores"] = [h["best_score"] for h in fit["history"]]
        fits[spec] = kept
    answers = frame.drop_duplicates("qid")["answer"].tolist() if len(frame) else []
    return {"user_id": record["user_id"], "n_test": record["n_test"], "methods": methods,
            "answer_letters": _letter_counts(answers), "fits": fits,
            **{k: record[k] for k in ("usage", "method_usage", "seconds", "wall_s", "machines")
               if k in record}}


def write_report(out: str | Path, records: list[dict[str, Any]], meta: dict[str, Any],
                 partial: Sequence[dict[str, Any]] = ()) -> dict:
    """Write the report folder from per-user records (``rows``, ``fits``, ``usage``,
    ``seconds``, ``wall_s``) and the run's ``meta``; returns the summary tables. LLM usage
    not split by user (``fspo eval``'s win rates) can come as ``meta["usage_beyond_users"]``:
    it counts in the totals and the phase table. ``partial``: records of users with only some
    methods done, kept in ``summary.json`` alone (``bench pool`` completes them)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for r in records for row in r["rows"]]
    atomic_write_text(out / "results.jsonl", "".join(
        json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    users = []
    for r in [*records, *partial]:
        vanilla = {row["qid"]: row.get("choice") for row in r["rows"]
                   if row["method"] == "vanilla"} if "vanilla" in r["seconds"] else None
        users.append(summarize(r, vanilla))
    for user in users[len(records):]:
        user["incomplete"] = True
    return render(out, users, meta)


#: what must agree for summaries to be pooled into one report (methods may differ: a part
#: may run some methods for some users)
POOLED_FIELDS = ("protocol", "data", "models", "settings", "seed", "split")


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable summary.json ({e})") from None
    if not isinstance(summary, dict) or summary.get("format") != SUMMARY_FORMAT:
        raise ConfigError(f"{path}: field format: expected {SUMMARY_FORMAT} (a summary.json "
                          "written by a benchmark report)")
    return summary


def pool(paths: Sequence[str | Path]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The users and meta of several ``summary.json`` files of one benchmark (the same
    protocol, data, models, settings, seed and split), unit by unit: a run split over
    sessions or machines by users (``--user-ids``) or by methods (``--methods``). A user's
    units from several parts join; one unit in two parts must have the same results (vanilla
    run again beside the rest); the methods are those of every part, in order of appearance.
    Anything else is a ConfigError that names the file and the field."""
    if not paths:
        raise ConfigError("bench pool: no summary.json given")
    parts = [(Path(p), _read_summary(Path(p))) for p in paths]
    first_path, first = parts[0]
    labels: dict[str, str] = {}
    users: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], Path] = {}  # (user, method) -> the part it came from
    for path, summary in parts:
        for field in POOLED_FIELDS:
            if summary["meta"].get(field) != first["meta"].get(field):
                raise ConfigError(f"{path}: field meta.{field} differs from {first_path}'s: "
                                  "only runs of one benchmark pool")
        for m in summary["meta"]["methods"]:
            if labels.setdefault(m["spec"], m["label"]) != m["label"]:
                raise ConfigError(f"{path}: method {m['spec']} is labelled {m['label']!r}, "
                                  f"elsewhere {labels[m['spec']]!r}")
        for user in summary["users"]:
            uid = user["user_id"]
            if uid not in users:
                users[uid] = copy.deepcopy(user)  # joined into below
                origin.update({(uid, s): path for s in user["seconds"]})
            else:
                _join(users[uid], user, path, origin)
    for user in users.values():
        user.pop("incomplete", None)
        if not set(labels) <= set(user["seconds"]):
            user["incomplete"] = True
    meta = {k: v for k, v in first["meta"].items()
            if k not in ("sections", "units_run_this_session", "this_session_wall_s")}
    meta["methods"] = [{"spec": s, "label": label} for s, label in labels.items()]
    meta["usage_beyond_users"] = sum_usage([s["meta"].get("usage_beyond_users", {})
                                            for _, s in parts])
    meta["stopped_users"] = {u: why for _, s in parts
                             for u, why in s["meta"].get("stopped_users", {}).items()
                             if users.get(u, {}).get("incomplete")}
    meta["execution"] = [s["meta"].get("execution") for _, s in parts]
    meta["pooled_from"] = [{"summary": str(p), "users": [u["user_id"] for u in s["users"]],
                            "methods": [m["spec"] for m in s["meta"]["methods"]]}
                           for p, s in parts]
    notes = [n for _, s in parts for n in s["meta"].get("notes", [])]
    meta["notes"] = [*dict.fromkeys(notes), "Pooled from " + "; ".join(
        f"{p} ({len(s['users'])} users)" for p, s in parts) + "."]
    return list(users.values()), meta


def _join(user: dict[str, Any], more: dict[str, Any], path: Path,
          origin: dict[tuple[str, str], Path]) -> None:
    """Add the units of ``more`` (the same user, from the part at ``path``) to ``user``."""
    uid = user["user_id"]
    for field in ("n_test", "answer_letters"):
        if more.get(field) != user.get(field):
            raise ConfigError(f"{path}: user {uid}: field {field} differs from "
                              f"{origin[uid, next(iter(user['seconds']))]}'s (another split)")
    if "method_usage" not in user or "method_usage" not in more:
        raise ConfigError(f"{path}: user {uid} is in two parts without per-method usage")
    for spec in more["seconds"]:
        if spec in user["seconds"]:
            if more["methods"].get(spec) != user["methods"].get(spec):
                raise ConfigError(f"{path}: user {uid}, method {spec}: other results than in "
                                  f"{origin[uid, spec]}")
            continue  # the same unit twice (vanilla beside other methods)
        origin[uid, spec] = path
        for field in ("methods", "fits", "seconds", "method_usage", "machines"):
            if spec in more.get(field, {}):
                user.setdefault(field, {})[spec] = more[field][spec]
    user["usage"] = sum_usage(list(user["method_usage"].values()))
    user["wall_s"] = round(sum(user["seconds"].values()), 2)


def render(out: str | Path, users: list[dict[str, Any]], meta: dict[str, Any]) -> dict:
    """Every file of the report but ``results.jsonl``, from the users' summaries
    (:func:`summarize`) and the run's ``meta``; returns the summary tables. Users marked
    ``incomplete`` (some methods not done) are kept in ``summary.json`` alone."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(
        {"format": SUMMARY_FORMAT, "meta": meta, "users": users}, indent=1, default=str) + "\n")
    users = [u for u in users if not u.get("incomplete")]
    labels = {m["spec"]: m["label"] for m in meta["methods"]}
    specs = list(labels)
    seed = meta.get("seed", 0)
    ids = [u["user_id"] for u in users]
    metrics = [m for m in METRICS
               if any(m in e["metrics"] for u in users for e in u["methods"].values())] \
        or ["correct"]

    # per user x method, every metric
    per_user = {m: pd.DataFrame([[u["methods"].get(s, {}).get("metrics", {}).get(m, np.nan)
                                  for s in specs] for u in users],
                                index=pd.Index(ids, name="user_id"),
                                columns=pd.Index(specs, name="method"), dtype=float)
                for m in metrics}
    # the first metric present is the headline (choice accuracy where there are choices)
    accuracy = per_user[metrics[0]]
    shown = accuracy.map(_pct).rename(columns=labels)
    shown.insert(0, "test questions", [u["n_test"] for u in users])
    shown = shown.reset_index().rename(columns={"index": "user_id"})
    _write_csv(out / "per_user.csv", accuracy, index=True)
    atomic_write_text(out / "per_user.md", markdown(shown) + "\n")

    # per method
    has_vanilla = "vanilla" in specs
    fits = {s: [u["fits"][s] for u in users if u["fits"].get(s)] for s in specs}
    collapsed = {s: sum(bool(f.get("collapsed")) for f in fs) for s, fs in fits.items()}
    failures = {s: sum_usage([f.get("failures", {}) for f in fs]) for s, fs in fits.items()}
    counts = {s: sum_usage([f.get("counts", {}) for f in fs]) for s, fs in fits.items()}
    # answers a generating method (the DSPy peers) could not parse, of those it gave
    unparsed = {s: (failures[s].get("unparsed_answers", 0), counts[s].get("answers", 0))
                for s in specs}
    table = []
    for spec in specs:
        mine = [u["methods"][spec] for u in users if spec in u["methods"]]
        row: dict[str, Any] = {"method": spec, "label": labels[spec]}
        for m in metrics:
            values = per_user[m][spec].dropna().to_numpy()
            mean, lo, hi = mean_ci(values, seed=seed)
            key = _key(m)
            row.update({key: mean, f"{key}_ci_low": lo, f"{key}_ci_high": hi})
        row["users"] = int(accuracy[spec].notna().sum())
        row["top_letter"], row["top_letter_share"] = _top_letter(
            sum_usage([e["letters"] for e in mine]))
        if has_vanilla and spec != "vanilla" and mine:
            # (a unit pooled from a part without vanilla has no count: then none is shown)
            counted = [e.get("differs_from_vanilla") for e in mine]
            differ, answered = np.sum(counted, axis=0) if all(counted) else (0, 0)
            row["differs_from_vanilla"] = float(differ / answered) if answered \
                else float("nan")
        row["collapsed_users"] = collapsed[spec]
        if unparsed[spec][1]:
            row["unparsed_answers"], row["answers"] = unparsed[spec]
        table.append(row)
    per_method = pd.DataFrame(table)
    _write_csv(out / "per_method.csv", per_method)
    gold_letter, gold_share = _top_letter(sum_usage([u["answer_letters"] for u in users]))
    md_rows = []
    for r in table:
        cells = {"Method": r["label"]}
        for m in metrics:
            key = _key(m)
            cells[METRICS[m]] = _pct(r[key])
            cells[f"{METRICS[m]} 95% CI"] = f"[{_pct(r[key + '_ci_low'])}, " \
                                            f"{_pct(r[key + '_ci_high'])}]"
        cells["Users"] = r["users"]
        cells["Top letter"] = f"{r['top_letter']} ({_pct(r['top_letter_share'])}%)" \
            if r["top_letter"] else "-"
        if has_vanilla:
            differs = r.get("differs_from_vanilla", np.nan)
            cells["Differs from vanilla"] = "-" if differs != differs else f"{_pct(differs)}%"
        cells["Collapsed pools"] = r["collapsed_users"] if any(collapsed.values()) else "-"
        if any(n for _, n in unparsed.values()):
            cells["Unparsed"] = f"{r['unparsed_answers']}/{r['answers']}" if "answers" in r \
                else "-"
        md_rows.append(cells)
    md_method = markdown(pd.DataFrame(md_rows)) if md_rows else "(no methods)"
    atomic_write_text(out / "per_method.md", md_method + "\n")

    # paired differences over users: each method minus every method listed before it
    paired = []
    complete = accuracy.dropna()
    for i, spec in enumerate(specs):
        for base in specs[:i]:
            if complete.empty:
                continue
            d, lo, hi = paired_bootstrap_ci(complete[spec].to_numpy(),
                                            complete[base].to_numpy(), seed=seed)
            paired.append({"method": spec, "baseline": base, "diff": d, "ci_low": lo,
                           "ci_high": hi, "significant": bool(lo > 0 or hi < 0),
                           "users": len(complete)})
    paired_df = pd.DataFrame(paired, columns=["method", "baseline", "diff", "ci_low",
                                              "ci_high", "significant", "users"])
    _write_csv(out / "paired.csv", paired_df)
    md_paired = markdown(pd.DataFrame([{
        "Method": labels[p["method"]], "minus": labels[p["baseline"]],
        "Diff (points)": f"{100 * p['diff']:+.1f}",
        "95% CI": f"[{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]",
        "CI excludes 0": "yes" if p["significant"] else "no"} for p in paired])) \
        if paired else "(fewer than two methods: no pairs)"
    atomic_write_text(out / "paired.md", md_paired + "\n")

    # cost, optimizer failures, memory curves
    n = max(1, len(users))
    total = sum_usage([u["usage"] for u in users] + [meta.get("usage_beyond_users", {})])
    seconds = {s: float(np.mean([u["seconds"].get(s, 0.0) for u in users]))
               for s in specs} if users else {}
    wall = [u["wall_s"] for u in users]
    usage = {"total": total, "calls_per_user": {k: v.get("calls", 0) / n
                                                for k, v in total.items()},
             "per_user": {u["user_id"]: u["usage"] for u in users},
             "optimizer_failures": {s: f for s, f in failures.items() if f},
             "optimizer_counts": {s: c for s, c in counts.items() if c},
             "seconds_per_user_by_method": seconds,
             "wall_s_per_user": {"mean": float(np.mean(wall)) if wall else 0.0,
                                 "total": float(np.sum(wall)) if wall else 0.0}}
    atomic_write_text(out / "usage.json", json.dumps(usage, indent=1) + "\n")
    atomic_write_text(out / "config.json", json.dumps({**meta, "users": len(users)},
                                                      indent=1, default=str) + "\n")
    curves = {}
    for spec, fs in fits.items():
        series = [f["best_scores"] for f in fs if f.get("best_scores")]
        if series:
            width = max(len(s) for s in series)
            curves[labels[spec]] = np.array([s + [s[-1]] * (width - len(s)) for s in series],
                                            dtype=float).mean(axis=0).tolist()
    title = f"{meta['protocol']} on {meta['data']}"
    _plots(out, per_method, curves, title)

    phase_rows = pd.DataFrame([
        {"model": model, "phase": phase, "calls": u.get("calls", 0),
         "cache hits": u.get("cache_hits", 0), "prompt tokens": u.get("prompt_tokens", 0),
         "completion tokens": u.get("completion_tokens", 0),
         "seconds": f"{u.get('seconds', 0):.0f}", "calls/user": f"{u.get('calls', 0) / n:.1f}"}
        for model, tot in total.items() for phase, u in sorted(tot.get("by_phase", {}).items())])
    # methods count different things (Fermi its replies, the DSPy peers their answers): a
    # count a method does not keep is "-", not 0
    fail_rows = pd.DataFrame([{"method": labels[s], **counts[s], **failures[s]}
                              for s in specs if failures[s] or counts[s]])
    fail_rows = fail_rows.apply(lambda col: col.map(
        lambda v: "-" if v != v else (f"{v:.0f}" if isinstance(v, float) else v)))
    cost_md = _cost_table(users, specs, labels)
    models = meta.get("models", {})
    machines = [m for u in users for m in u.get("machines", {}).values()]
    notes = [*meta.get("notes", []), *([_machines_note(machines)] if machines else [])]
    readme = [f"# {title}", "",
              f"Users: {len(users)} (skipped, too few opinions: "
              f"{len(meta.get('skipped_users', []))}). Models: "
              + ", ".join(f"{k} {v}" for k, v in models.items()) + ". "
              + " ".join(str(x) for x in notes), "",
              "## Accuracy (macro over users, 95% bootstrap CI)", "", md_method, "",
              *[line for title_, body in meta.get("sections", [])
                for line in (f"## {title_}", "", body, "")],
              *([f"The users' own answers: most frequent letter {gold_letter} "
                 f"({_pct(gold_share)}%).", ""] if gold_letter else []),  # none: no choices
              f"## Paired differences over users in {METRICS[metrics[0]].lower()} "
              "(95% bootstrap CI)", "", md_paired, "",
              "## Per user", "", markdown(shown), "",
              "## LLM calls, tokens and seconds per phase", "",
              markdown(phase_rows) if len(phase_rows) else "(none)", "",
              *(["## Cost per user by method (fit and predict, all models)", "", cost_md, ""]
                if cost_md else []),
              f"Wall time per user: {usage['wall_s_per_user']['mean']:.1f} s (mean), "
              f"{usage['wall_s_per_user']['total']:.0f} s in all. Mean seconds per user by "
              "method (fit and predict): "
              + ", ".join(f"{labels[k]} {v:.1f}" for k, v in seconds.items()) + ".", "",
              "## Optimizer replies and failures", "",
              markdown(fail_rows) if len(fail_rows) else "(no prompt optimizer in this run)",
              "", "![accuracy](accuracy.png)"
              + (" ![memory](memory_curve.png)" if curves else ""), ""]
    atomic_write_text(out / "README.md", "\n".join(readme))
    return {"per_method": table, "paired": paired, "per_method_md": md_method,
            "paired_md": md_paired, "per_user_md": markdown(shown), "usage": usage,
            "curves": curves}


def _machines_note(machines: list[str]) -> str:
    """Where the report's units were computed (a resumed run may span machines)."""
    return "Units computed on: " + "; ".join(
        f"{name} ({n})" for name, n in Counter(machines).most_common()) + "."


def _cost_table(users: list[dict[str, Any]], specs: list[str], labels: dict[str, str]) -> str:
    """Mean LLM calls, tokens and seconds per user for each method (from each unit's usage,
    every model together: computed calls, the call cache's hits counted apart), its tokens over
    Fermi's where Fermi ran, and for methods that count them (the DSPy peers) the tokens of
    every request, cache hits included; "" without per-method usage."""
    if not users or not all("method_usage" in u for u in users):
        return ""
    n = len(users)
    requested = any("requested_tokens" in f.get("counts", {})
                    for u in users for f in u["fits"].values())

    def total(spec: str, key: str) -> float:
        return sum(m.get(key, 0) for u in users
                   for m in u["method_usage"].get(spec, {}).values()) / n

    fermi = total("fermi", "prompt_tokens") + total("fermi", "completion_tokens")
    rows = []
    for spec in specs:
        tokens = total(spec, "prompt_tokens") + total(spec, "completion_tokens")
        row = {"Method": labels[spec], "calls": f"{total(spec, 'calls'):.0f}",
               "cache hits": f"{total(spec, 'cache_hits'):.0f}",
               "prompt tokens": f"{total(spec, 'prompt_tokens'):.0f}",
               "completion tokens": f"{total(spec, 'completion_tokens'):.0f}",
               "seconds": f"{np.mean([u['seconds'].get(spec, 0.0) for u in users]):.1f}"}
        if "fermi" in specs:
            row["tokens / Fermi's"] = f"{tokens / fermi:.2f}" if fermi else "-"
        if requested:  # what a method asked for, answered from the cache or not
            mine = [u["fits"].get(spec, {}).get("counts", {}).get("requested_tokens")
                    for u in users]
            row["tokens with cache hits"] = f"{sum(mine) / n:.0f}" \
                if all(x is not None for x in mine) else "-"
        rows.append(row)
    return markdown(pd.DataFrame(rows))


def _plots(out: Path, per_method: pd.DataFrame, curves: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next((k for k in ("accuracy", "logp_accuracy") if k in per_method), None)
    if len(per_method) and key:
        fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(per_method), 4))
        acc = per_method[key].to_numpy() * 100
        err = np.nan_to_num(np.vstack([acc - per_method[f"{key}_ci_low"].to_numpy() * 100,
                                       per_method[f"{key}_ci_high"].to_numpy() * 100 - acc]))
        ax.bar(per_method["label"], acc, yerr=err, capsize=4, color="#4c72b0")
        ax.set_ylabel(f"{key.replace('_', ' ')} (%), 95% CI")
        ax.set_title(title, fontsize=9)
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
        fig.tight_layout()
        atomic_write(out / "accuracy.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
        plt.close(fig)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, curve in curves.items():
            ax.plot(range(len(curve)), [100 * c for c in curve], marker="o", label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel("best memory score (%)")
        ax.set_title(f"best memory score per iteration: {title}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        atomic_write(out / "memory_curve.png",
                     lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
        plt.close(fig)
