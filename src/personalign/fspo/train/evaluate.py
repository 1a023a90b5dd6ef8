"""FSPO evaluation: implicit reward accuracy, choice accuracy, win rate, baselines, report.

Metrics on held-out users' episode records (prompt, chosen, rejected, user_id, meta):

- implicit reward accuracy: beta * log(pi/ref)(chosen) > same for rejected, ref = the model's
  reference (SFT result); models without a reference (the base model) have no implicit reward,
  so every model also gets ``logp_accuracy``: log pi(chosen) > log pi(rejected).
- choice accuracy (records whose ``meta.query_meta`` holds ``options`` and ``answer``, as the
  opinionqa-preferences episodes do): argmax over options of the policy's summed
  log-likelihood of "## Preferred Response\\n{option}\\n" + EOS given the shots; reported as the
  macro average over users, like opinionqa-individual's accuracy.
- pairwise win rate against a baseline's generations, judged by any LLM backend given the
  user's description, in both orders (consistent wins 1, inconsistent 0.5), mean and standard
  error.

Prompt modes let one set of episodes serve the baselines: ``as-is`` (few-shot), ``zero-shot``
(the shots removed: pooled training without shots) and ``oracle`` (the user's description
first).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from personalign.fspo.data.serialization import serialize_prompt
from personalign.fspo.train.model import PersonalizedModel, completion_text
from personalign.fspo.train.trainer import peak_rss_mb
from personalign.runtime.errors import DataError
from personalign.runtime.llm.types import ChoiceItem
from personalign.runtime.metrics import mean_ci, paired_bootstrap_ci, standard_error
from personalign.runtime.storage import atomic_write_text

log = logging.getLogger(__name__)

PROMPT_MODES = ("as-is", "zero-shot", "oracle")
QUESTION_MARK = "## Question\n"


# ---------------------------------------------------------------------------- prompts
def final_question(prompt: str) -> str:
    """The episode's query question: the text after the last "## Question" header."""
    at = prompt.rfind(QUESTION_MARK)
    if at < 0:
        raise DataError("episode prompt has no '## Question' section", field="prompt")
    return prompt[at + len(QUESTION_MARK):].strip()


def transform_prompt(record: Mapping[str, Any], mode: str,
                     descriptions: Mapping[str, str] | None = None) -> str:
    prompt = record["prompt"]
    if mode == "as-is":
        return prompt
    if mode == "zero-shot":
        return serialize_prompt([], final_question(prompt))
    if mode == "oracle":
        description = (descriptions or {}).get(record["user_id"])
        if not description:
            raise DataError(f"no description for user {record['user_id']!r} (oracle mode)",
                            field="user_id")
        return f"# User Description\n{description}\n\n{prompt}"
    raise ValueError(f"unknown prompt mode {mode!r}; known: {PROMPT_MODES}")


def zero_shot_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Training records for the pooled baseline: the same pairs without shots."""
    return [{**r, "prompt": transform_prompt(r, "zero-shot"), "n_shots": 0} for r in records]


def leave_one_out_episodes(pairs: Sequence[Any], n_shots: int, seed: int = 0) -> list[dict]:
    """Evaluation episodes for users with few pairs: each pair of a user is the query once,
    with up to ``n_shots`` of that user's OTHER pairs (seeded shuffle) as shots."""
    import random

    from personalign.fspo.data.episodes import derived_seed, group_by_user, make_episode

    out = []
    for user_id, rows in group_by_user(pairs).items():
        for q, query in enumerate(rows):
            others = [p for i, p in enumerate(rows) if i != q]
            random.Random(derived_seed(seed, user_id, q)).shuffle(others)
            episode = make_episode(others[:n_shots], query,
                                   meta={"query": q, "eval": True, "leave_one_out": True})
            out.append(episode.to_dict())
    return out


def _options(record: Mapping[str, Any]) -> tuple[list[str], int] | None:
    meta = record.get("meta") or {}
    q = meta.get("query_meta") or meta
    if isinstance(q, dict) and q.get("options") and q.get("answer") is not None:
        return [str(o) for o in q["options"]], int(q["answer"])
    return None


# ---------------------------------------------------------------------------- scoring
@dataclass
class EvalResult:
    name: str
    rows: list[dict[str, Any]]
    wall_s: float
    summary: dict[str, Any] = field(default_factory=dict)


def _score(pm: PersonalizedModel, prompt: str, completions: list[str], reference: bool):
    example = pm.encode(prompt, completions)
    logps, _ = pm.score_encoded(example, reference=reference)
    return logps.double().numpy(), example.prompt_truncated


def has_reference(pm: PersonalizedModel) -> bool:
    return pm.reference is not None or hasattr(pm.model, "disable_adapter")


def _choice_fields(option_logps: np.ndarray, answer: int) -> dict[str, Any]:
    choice = int(np.argmax(option_logps))
    return {"choice": choice, "answer": answer, "choice_correct": float(choice == answer),
            "n_options": len(option_logps),
            "option_logps": [round(float(x), 4) for x in option_logps]}


def _finish(name: str, rows: list[dict[str, Any]], wall_s: float) -> EvalResult:
    rows = [{k: (float(v) if isinstance(v, np.floating) else v) for k, v in r.items()}
            for r in rows]
    result = EvalResult(name, rows, wall_s)
    result.summary = summarize(rows)
    result.summary["wall_s"] = round(wall_s, 1)
    return result


def evaluate_records(pm: PersonalizedModel, records: Sequence[Mapping[str, Any]], *,
                     name: str | None = None, beta: float = 0.01, mode: str = "as-is",
                     descriptions: Mapping[str, str] | None = None,
                     reference_name: str | None = None,
                     progress: bool = True) -> EvalResult | tuple[EvalResult, EvalResult]:
    """One row per record: log-probs of chosen/rejected (and of every option when known)
    under the policy and, when the model has one, under its reference.

    With ``reference_name`` (and a model that has a reference) the reference pass is also
    returned as a model of its own: for a trained FSPO model the reference IS the SFT-only
    model, so that baseline costs nothing extra.
    """
    name = name or pm.name
    eos = pm.tokenizer.eos_token
    with_ref = has_reference(pm)
    rows, ref_rows = [], []
    start = time.time()
    for rec in tqdm(records, desc=f"eval {name}", disable=not progress, dynamic_ncols=True):
        prompt = transform_prompt(rec, mode, descriptions)
        completions = [rec["chosen"], rec["rejected"]]
        opts = _options(rec)
        if opts:
            completions += [completion_text(o, eos) for o in opts[0]]
        pol, truncated = _score(pm, prompt, completions, reference=False)
        query = (rec.get("meta") or {}).get("query_meta") or {}
        common = {"user_id": rec["user_id"], "qid": query.get("qid"),
                  "n_shots": rec.get("n_shots"), "prompt_truncated": truncated}
        row: dict[str, Any] = {**common, "logp_chosen": pol[0], "logp_rejected": pol[1],
                               "logp_correct": float(pol[0] > pol[1])}
        if opts:
            row.update(_choice_fields(pol[2:], opts[1]))
        if with_ref:
            ref, _ = _score(pm, prompt, completions, reference=True)
            rc, rr = beta * (pol[0] - ref[0]), beta * (pol[1] - ref[1])
            row.update(reward_chosen=rc, reward_rejected=rr, reward_margin=rc - rr,
                       reward_correct=float(rc > rr))
            ref_row = {**common, "logp_chosen": ref[0], "logp_rejected": ref[1],
                       "logp_correct": float(ref[0] > ref[1])}
            if opts:
                ref_row.update(_choice_fields(ref[2:], opts[1]))
            ref_rows.append(ref_row)
        rows.append(row)
    wall = time.time() - start
    result = _finish(name, rows, wall)
    if reference_name and with_ref:
        return result, _finish(reference_name, ref_rows, wall)
    return result


def _macro(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    per_user: dict[str, list[float]] = {}
    for r in rows:
        if r.get(key) is not None:
            per_user.setdefault(r["user_id"], []).append(r[key])
    return [float(np.mean(v)) for _, v in sorted(per_user.items())]


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"pairs": len(rows), "users": len({r["user_id"] for r in rows})}
    for key, label in (("reward_correct", "reward_accuracy"), ("logp_correct", "logp_accuracy"),
                       ("choice_correct", "choice_accuracy")):
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            continue
        out[label] = float(np.mean(values))
        out[f"{label}_se"] = standard_error(values)
        macro = _macro(rows, key)
        m, lo, hi = mean_ci(macro)
        out[f"{label}_macro"], out[f"{label}_macro_ci"] = m, [round(lo, 4), round(hi, 4)]
    margins = [r["reward_margin"] for r in rows if r.get("reward_margin") is not None]
    if margins:
        out["reward_margin"] = float(np.mean(margins))
    return out


# ---------------------------------------------------------------------------- win rate
JUDGE_TEMPLATE = (
    "You are judging which response a specific user would prefer.\n"
    "User description: {description}\n\n"
    "Question: {question}\n\n"
    "(A) {a}\n\n"
    "(B) {b}\n\n"
    "Which response would this user prefer? Ignore length; judge only by fit to the user.\n"
    "Answer:")


@dataclass
class WinRate:
    mean: float
    se: float
    n: int
    scores: list[float]
    judge: str

    def as_dict(self) -> dict[str, Any]:
        return {"win_rate": self.mean, "se": self.se, "n": self.n, "judge": self.judge}


def pairwise_win_rate(judge, items: Sequence[Mapping[str, str]]) -> WinRate:
    """Win rate of ``response`` over ``baseline`` for each item (question, description,
    response, baseline), judged in both orders: two wins 1, two losses 0, otherwise 0.5."""
    if not items:
        raise DataError("no items to judge")
    prompts = []
    for it in items:
        common = {"description": it["description"], "question": it["question"]}
        prompts.append(ChoiceItem(JUDGE_TEMPLATE.format(a=it["response"], b=it["baseline"],
                                                        **common), ("A", "B")))
        prompts.append(ChoiceItem(JUDGE_TEMPLATE.format(a=it["baseline"], b=it["response"],
                                                        **common), ("A", "B")))
    results = judge.score_choices(prompts, method="letter")
    scores = []
    for i in range(len(items)):
        first, second = results[2 * i].choice, results[2 * i + 1].choice
        wins = int(first == 0) + int(second == 1)
        losses = int(first == 1) + int(second == 0)
        scores.append(1.0 if wins == 2 else 0.0 if losses == 2 else 0.5)
    x = np.asarray(scores)
    se = standard_error(x)
    return WinRate(float(x.mean()), se, len(x), scores, getattr(judge, "model_id", str(judge)))


def generations(pm: PersonalizedModel, records: Sequence[Mapping[str, Any]], *,
                mode: str = "as-is", descriptions: Mapping[str, str] | None = None,
                max_new_tokens: int = 96, progress: bool = True) -> list[str]:
    """Greedy responses to each record's query, from its (transformed) prompt."""
    return [pm.generate_from_prompt(transform_prompt(rec, mode, descriptions),
                                    max_new_tokens=max_new_tokens)
            for rec in tqdm(records, desc=f"generate {pm.name}", disable=not progress)]


# ---------------------------------------------------------------------------- report
def _md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


SUMMARY_COLUMNS = ("method", "pairs", "users", "reward_accuracy", "reward_accuracy_se",
                   "reward_margin", "logp_accuracy", "logp_accuracy_se", "choice_accuracy",
                   "choice_accuracy_macro", "choice_accuracy_macro_ci", "win_rate", "win_rate_se",
                   "wall_s")


def write_report(out: str | Path, results: Sequence[EvalResult], *, config: dict[str, Any],
                 cost: dict[str, Any], win_rates: Mapping[str, WinRate] | None = None,
                 paired_against: str | None = None) -> Path:
    """predictions.jsonl, summary.csv/.md, paired.csv/.md, accuracy.png, config.json,
    cost.json and README.md in ``out``."""
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    win_rates = dict(win_rates or {})
    atomic_write_text(out / "predictions.jsonl", "".join(
        json.dumps({"method": res.name, **row}) + "\n" for res in results for row in res.rows))

    table = []
    for res in results:
        s = dict(res.summary)
        if res.name in win_rates:
            s["win_rate"], s["win_rate_se"] = win_rates[res.name].mean, win_rates[res.name].se
        table.append([res.name] + [s.get(c, "") for c in SUMMARY_COLUMNS[1:]])
    frame = pd.DataFrame(table, columns=list(SUMMARY_COLUMNS))
    frame.to_csv(out / "summary.csv", index=False)
    summary_md = _md_table(SUMMARY_COLUMNS, table)
    atomic_write_text(out / "summary.md", summary_md + "\n")

    paired_md = ""
    if paired_against:
        base = next((r for r in results if r.name == paired_against), None)
        rows = []
        for res in results:
            if base is None or res.name == paired_against:
                continue
            for key in ("choice_correct", "logp_correct"):
                a, b = _macro(res.rows, key), _macro(base.rows, key)
                if a and len(a) == len(b):
                    d, lo, hi = paired_bootstrap_ci(a, b)
                    rows.append([res.name, paired_against, key, d, lo, hi, len(a)])
        cols = ("method", "baseline", "metric (per-user mean)", "difference", "ci_low",
                "ci_high", "users")
        pd.DataFrame(rows, columns=list(cols)).to_csv(out / "paired.csv", index=False)
        paired_md = _md_table(cols, rows)
        atomic_write_text(out / "paired.md", paired_md + "\n")

    _plot(out / "accuracy.png", results)
    atomic_write_text(out / "config.json", json.dumps(config, indent=2, default=str))
    cost = {**cost, "peak_rss_mb": round(peak_rss_mb(), 1),
            "eval_wall_s": {r.name: round(r.wall_s, 1) for r in results}}
    atomic_write_text(out / "cost.json", json.dumps(cost, indent=2))
    readme = ["# FSPO evaluation", "", f"Protocol: {config.get('protocol', '?')}", "",
              "## Summary", "", summary_md, ""]
    if win_rates:
        readme += ["## Win rates", "", _md_table(
            ("method", "win_rate", "se", "n", "judge"),
            [[k, w.mean, w.se, w.n, w.judge] for k, w in win_rates.items()]), ""]
    if paired_md:
        readme += [f"## Paired differences vs {paired_against} (95% bootstrap CI over users)",
                   "", paired_md, ""]
    readme += ["![accuracy](accuracy.png)", "", "## Config", "", "```json",
               json.dumps(config, indent=2, default=str), "```", "", "## Cost", "", "```json",
               json.dumps(cost, indent=2), "```", ""]
    atomic_write_text(out / "README.md", "\n".join(readme))
    return out


def _plot(path: Path, results: Sequence[EvalResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("reward_accuracy", "logp_accuracy", "choice_accuracy")
               if any(m in r.summary for r in results)]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(results), 3.6))
    width = 0.8 / max(1, len(metrics))
    for j, metric in enumerate(metrics):
        xs = np.arange(len(results)) + j * width
        ys = [r.summary.get(metric, np.nan) for r in results]
        es = [r.summary.get(f"{metric}_se", 0.0) for r in results]
        ax.bar(xs, ys, width, yerr=np.nan_to_num(es), label=metric, capsize=3)
    ax.set_xticks(np.arange(len(results)) + width * (len(metrics) - 1) / 2)
    ax.set_xticklabels([r.name for r in results], rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (± s.e.)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _signature(records, beta, descriptions, win_items, gen_max_new_tokens) -> list:
    import hashlib

    blob = json.dumps([[r["user_id"], r["prompt"], r["chosen"], r["rejected"]] for r in records]
                      + [beta, sorted((descriptions or {}).items()), len(win_items),
                         gen_max_new_tokens])
    return [hashlib.sha256(blob.encode()).hexdigest()]


def evaluate_models(models: Mapping[str, tuple[Callable[[], PersonalizedModel], str]],
                    records: Sequence[Mapping[str, Any]], out: str | Path, *,
                    beta: float = 0.01, descriptions: Mapping[str, str] | None = None,
                    config: dict[str, Any] | None = None, judge=None,
                    win_against: str | None = None, win_max_items: int = 20,
                    gen_max_new_tokens: int = 96, progress: bool = True) -> list[EvalResult]:
    """Evaluate each named model (loader, prompt mode[, name for its reference pass]) on the
    records and write the report.

    Models are loaded one at a time (one in memory). With a ``judge`` and ``win_against``
    (a model name), each other model's greedy generations for the first ``win_max_items``
    records are judged against that model's, with the user's description.
    """
    start = time.time()
    out = Path(out)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    results, gens = [], {}
    win_items = list(records[:win_max_items])
    signature = _signature(records, beta, descriptions, win_items if judge else [],
                           gen_max_new_tokens)
    config = {**(config or {}), "models": {k: list(v[1:]) for k, v in models.items()}}
    for name, (loader, mode, *extra) in models.items():
        # Finished models are kept in parts/ so an interrupted evaluation resumes.
        part = parts / f"{_safe(name)}.json"
        saved = json.loads(part.read_text(encoding="utf-8")) if part.exists() else None
        if saved and saved.get("signature") == signature + [mode] + extra:
            log.info("%s: reusing %s", name, part)
            got = [EvalResult(r["name"], r["rows"], r["wall_s"], r["summary"])
                   for r in saved["results"]]
            if saved.get("generations") is not None:
                gens[name] = saved["generations"]
        else:
            pm = loader()
            res_ = evaluate_records(pm, records, name=name, beta=beta, mode=mode,
                                    descriptions=descriptions,
                                    reference_name=extra[0] if extra else None,
                                    progress=progress)
            got = list(res_) if isinstance(res_, tuple) else [res_]
            if judge is not None and win_against:
                gens[name] = generations(pm, win_items, mode=mode, descriptions=descriptions,
                                         max_new_tokens=gen_max_new_tokens, progress=progress)
            del pm
            atomic_write_text(part, json.dumps({
                "signature": signature + [mode] + extra, "generations": gens.get(name),
                "results": [{"name": r.name, "rows": r.rows, "wall_s": r.wall_s,
                             "summary": r.summary} for r in got]}))
        for res in got:
            results.append(res)
            log.info("%s: %s", res.name, res.summary)
        # A partial report after every model: an interrupted run still leaves numbers.
        write_report(out, results, config=config,
                     cost={"wall_s": round(time.time() - start, 1), "partial": True},
                     paired_against=next(iter(models), None))
    win_rates = {}
    if judge is not None and win_against in gens:
        for name, texts in gens.items():
            if name == win_against:
                continue
            items = [{"question": final_question(r["prompt"]),
                      "description": (descriptions or {}).get(r["user_id"], ""),
                      "response": t, "baseline": b}
                     for r, t, b in zip(win_items, texts, gens[win_against])]
            win_rates[name] = pairwise_win_rate(judge, items)
    usage = judge.usage.as_dict() if judge is not None and hasattr(judge, "usage") else {}
    write_report(out, results, config=config,
                 cost={"wall_s": round(time.time() - start, 1), "judge_usage": usage},
                 win_rates=win_rates, paired_against=next(iter(models), None))
    return results
