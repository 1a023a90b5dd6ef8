"""Protocols on preference episodes (opinionqa-preferences, fspo-synthetic): FSPO's own
metrics, on the runtime's engine, in the one report.

Per held-out episode (a user's shots, a query, its chosen and rejected completions), for each
model, from one engine pass over [chosen, rejected, every option]:

- ``logp_correct``: log pi(chosen) > log pi(rejected);
- ``reward_correct``: the implicit reward beta * log(pi / ref) prefers chosen, where ref is the
  model's reference (FSPO: the SFT result, i.e. the run's model without its last adapter);
  the reference pass is also reported as a model of its own ("sft-only");
- ``correct`` (choice accuracy, where the episode carries the question's options and answer):
  the option the model would most likely write as the preferred response;
- win rate against the model's own base (the model it was trained from, without adapters or
  shots: FSPO's baseline) over every test record: greedy responses of both, prompted the same
  way (FSPO's raw-text format) with the same token budget, judged in both orders with the
  user's description and the domain's guidelines (``fspo.data.judge.win_rate``); the judge's
  order consistency on those items is reported beside each win rate.

Normalized log-probs suffice: every comparison above is a difference between two completions of
one prompt, which normalization leaves unchanged. Models trained on the user-description variant
(asked as-is) and every model asked in mode ``rat`` answer after the user description they write
themselves (``personalign.fspo.description``, the rule the ``fspo`` method uses too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from personalign.fspo.data.episodes import final_question, query_options, transform_prompt
from personalign.fspo.data.judge import DEFAULT_CONSISTENCY, JUDGE_PROMPT, Consistency
from personalign.fspo.description import DESCRIPTION_HEADER, descriptions_for, with_description
from personalign.fspo.personalizer import RESPONSE_HEADER
from personalign.fspo.train.model import base_model, model_files
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.base import LLM
from personalign.runtime.llm.types import ChoiceItem, SamplingParams, usage_since
from personalign.runtime.personalizer import SharedModels
from personalign.runtime.runs import RunFolder, model_identity


@dataclass(frozen=True)
class EpisodeModel:
    """A model to evaluate: ``base``, an FSPO model or run folder; how it is asked (``mode``);
    and, for a model with a reference, the name its reference pass is reported under."""

    name: str
    model: str
    mode: str = "as-is"
    reference_name: str | None = None


def baseline_of(m: EpisodeModel) -> EpisodeModel:
    """What ``m``'s responses are judged against: the model it was trained from, without
    adapters and without the user's shots (each trained model against its own base)."""
    base = base_model(m.model)
    return EpisodeModel(f"base-no-shots ({Path(base).name})", base, "zero-shot")


def _generations(run: RunFolder, shared: SharedModels, m: EpisodeModel,
                 records: Sequence[dict[str, Any]], descriptions: dict[str, str],
                 max_tokens: int, unit: str, progress: bool = False) -> dict[str, Any]:
    """``m``'s greedy responses to the records' questions (a resumable unit): ``texts``, and
    the ``usage`` that wrote them; a description-first model answers after the description
    it writes, as it is scored."""
    inputs = [list(records), [model_identity(m.model), m.mode], descriptions]
    gens = run.load(unit, inputs)
    if gens is None:
        before = shared.usage()
        llm = completion_llm(shared, m.model)
        prompts = [transform_prompt(r, m.mode, descriptions) for r in records]
        first = [i for i, r in enumerate(records) if _description_first(r, m.mode)]
        written = descriptions_for(llm, [prompts[i] for i in first], f"{m.name}/description")
        for i, text in zip(first, written):
            prompts[i] = with_description(prompts[i], text)
        params = SamplingParams(max_tokens=max_tokens, stop=("\n#",))
        with llm.phase(f"{m.name}/generate"):
            texts = llm.generate([p + RESPONSE_HEADER for p in prompts], params,
                                 progress=progress)
        gens = {"texts": [t[0].strip() for t in texts],
                "usage": usage_since(shared.usage(), before)}
        run.save(unit, gens, inputs)
    return gens


def completion_llm(models: SharedModels, spec: str, reference: bool = False) -> LLM:
    """The model of ``spec`` (or its reference) scoring whole completions followed by EOS."""
    base, adapters = model_files(spec)
    if reference:
        adapters = adapters[:-1]
    return models.llm(base, adapters=tuple(adapters), option_template="{option}",
                      option_eos=True, name=f"{spec}{' (reference)' if reference else ''}")


def has_reference(spec: str) -> bool:
    """LoRA runs have one (the model without its preference adapter); the base model none."""
    return bool(model_files(spec)[1])


def _description_first(record: dict[str, Any], mode: str) -> bool:
    """The model writes (or is given) the user's description before its response: asked
    with FSPO's predicted-description step (rat), or an episode of the user-description
    variant asked as-is (what the model was trained to do)."""
    meta = record.get("meta") or {}
    return mode == "rat" or (mode == "as-is" and meta.get("variant") == "user-description")


def _score(llm: LLM, records, mode, descriptions, phase) -> list[list[float]]:
    """Per record: log-probs of [chosen, rejected, every option]. A description-first model
    answers after the description it writes (``fspo.description``; ``descriptions`` are the
    judge's and the oracle's, not given to it); completions that already hold their
    descriptions (the variant's) follow the prompt."""
    prompts = [transform_prompt(rec, mode, descriptions) for rec in records]
    held = [rec["chosen"].startswith(DESCRIPTION_HEADER) for rec in records]
    first = [i for i, rec in enumerate(records)
             if _description_first(rec, mode) and (query_options(rec) or not held[i])]
    texts = descriptions_for(llm, [prompts[i] for i in first], f"{phase}/description")
    written = {i: with_description(prompts[i], t) for i, t in zip(first, texts)}
    items, parts = [], []
    for i, rec in enumerate(records):
        opts = query_options(rec)
        choices = tuple(f"{RESPONSE_HEADER}{o.strip()}\n" for o in opts[0]) if opts else ()
        pair = (rec["chosen"], rec["rejected"])
        if i in written and held[i]:  # normalized per item: each comparison stays within one
            items += [ChoiceItem(prefix=prompts[i], prompt="", options=pair),
                      ChoiceItem(prefix=written[i], prompt="", options=choices)]
            parts.append(2)
        else:
            items.append(ChoiceItem(prefix=written.get(i, prompts[i]), prompt="",
                                    options=pair + choices))
            parts.append(1)
    with llm.phase(phase):
        results = iter(llm.score_choices(items, method="text"))
    return [[lp for _ in range(n) for lp in next(results).logprobs] for n in parts]


def _rows(name: str, records, policy, reference, protocol: str, beta: float) -> list[dict]:
    rows = []
    for i, (rec, lp) in enumerate(zip(records, policy)):
        opts = query_options(rec)
        row: dict[str, Any] = {"protocol": protocol, "user_id": rec["user_id"],
                               "qid": opts[2] if opts else None, "index": i, "method": name,
                               "logp_correct": float(lp[0] > lp[1])}
        if opts:
            option_lps = lp[2:]
            choice = max(range(len(option_lps)), key=option_lps.__getitem__)
            row.update(choice=choice, answer=opts[1], n_options=len(option_lps),
                       correct=float(choice == opts[1]),
                       logprobs=[round(x, 4) for x in option_lps])
        if reference is not None:
            ref = reference[i]
            margin = beta * ((lp[0] - lp[1]) - (ref[0] - ref[1]))
            row.update(reward_correct=float(margin > 0), reward_margin=round(margin, 6))
        rows.append(row)
    return rows


def _win_rates(run: RunFolder, shared: SharedModels, models: Sequence[EpisodeModel],
               records: Sequence[dict[str, Any]], descriptions: dict[str, str], judge: LLM,
               consistency: Consistency, guidelines: str, max_tokens: int,
               progress: bool = False) -> tuple[str, dict]:
    """Each model's win rate against its own base (:func:`baseline_of`), one resumable unit
    per model; the markdown table (win rate, s.e., n, ties, the judge's order consistency)
    and the LLM usage of its units (generation and judging; units reused from an earlier
    session count what they cost then)."""
    from personalign.bench.report import sum_usage
    from personalign.fspo.data.judge import win_rate

    questions = [final_question(r["prompt"]) for r in records]
    users_descriptions = [descriptions.get(r["user_id"], "") for r in records]
    table, usage = [], {}  # usage by unit: a baseline's generations serve several models
    for m in models:
        baseline = baseline_of(m)
        if (model_files(m.model), m.mode) == (model_files(baseline.model), baseline.mode):
            continue  # the baseline itself
        gens = {unit: _generations(run, shared, who, records, descriptions, max_tokens, unit,
                                   progress)
                for unit, who in ((f"{m.name}/generations", m),
                                  (f"baseline/{baseline.model}/generations", baseline))}
        texts, against = (g["texts"] for g in gens.values())
        # (units saved before usage was kept have none)
        usage.update({unit: g.get("usage", {}) for unit, g in gens.items()})
        unit = f"{m.name}/win-rate"
        inputs = [texts, against, questions, users_descriptions, guidelines, consistency,
                  getattr(judge, "model_id", str(judge)), JUDGE_PROMPT]
        w = run.load(unit, inputs)
        if w is None:
            items = [{"question": q, "description": d, "response": t, "baseline": b}
                     for q, d, t, b in zip(questions, users_descriptions, texts, against)]
            before = judge.usage.as_dict()
            with judge.phase(f"{m.name}/judge"):
                result = win_rate(judge, items, consistency=consistency,
                                  guidelines=guidelines, progress=progress)
            w = result.as_dict() | {"scores": result.scores, "usage": {
                judge.model_id: usage_since(judge.usage.as_dict(), before)}}
            run.save(unit, w, inputs)
        usage[unit] = w.get("usage", {})
        table.append({"Model": m.name, "against": baseline.name,
                      "Win rate": f"{w['win_rate']:.3f}", "s.e.": f"{w['se']:.3f}",
                      "n": w["n"], "ties": w["ties"],
                      # before and after the position bias is taken out (``calibration``)
                      "order-consistent, raw": f"{w['judge_consistent']:.2f}",
                      "order-consistent, as judged": f"{1 - w['ties'] / w['n']:.2f}",
                      "judge": w["judge"], "calibration": w["consistency"]})
    if not table:
        return "", {}
    import pandas as pd

    from personalign.bench.report import markdown

    return markdown(pd.DataFrame(table)), sum_usage(list(usage.values()))


def evaluate_episodes(models: Sequence[EpisodeModel], records: Sequence[dict[str, Any]],
                      out: str | Path, *, protocol: str, beta: float = 0.01,
                      descriptions: dict[str, str] | None = None, judge: LLM | None = None,
                      judge_consistency: Consistency = DEFAULT_CONSISTENCY,
                      guidelines: str = "", win_max_items: int | None = None,
                      gen_max_tokens: int = 96, shared: SharedModels | None = None,
                      force: bool = False, progress: bool = True,
                      meta: dict[str, Any] | None = None) -> dict:
    """Evaluate every model on the records (one unit per model and user, resumable) and write
    the report; returns the report's summary."""
    from personalign.bench.report import sum_usage, write_report

    if not models:
        raise ConfigError("nothing to evaluate: no models")
    shared = shared or SharedModels()
    descriptions = descriptions or {}
    by_user: dict[str, list[dict]] = {}
    for rec in records:
        by_user.setdefault(rec["user_id"], []).append(rec)
    run = RunFolder.open(out, kind=f"fspo eval {protocol}",
                         inputs={"protocol": protocol, "beta": beta, "judge":
                                 getattr(judge, "model_id", None), "win_items": win_max_items,
                                 "gen_max_tokens": gen_max_tokens}, force=force)
    names = [m.name for m in models] + [m.reference_name for m in models
                                        if m.reference_name and has_reference(m.model)]
    per_user: dict[str, dict[str, dict]] = {u: {} for u in by_user}
    bar = tqdm(total=len(models) * len(by_user), desc="models x users", disable=not progress)
    for m in models:
        identity = [model_identity(m.model), m.mode]
        with_ref = has_reference(m.model)
        for user_id, recs in by_user.items():
            unit = f"{m.name}/{user_id}"
            inputs = [recs, identity, descriptions.get(user_id)]
            result = run.load(unit, inputs)
            if result is None:
                start = time.perf_counter()
                llms = [completion_llm(shared, m.model)]
                if with_ref:
                    llms.append(completion_llm(shared, m.model, reference=True))
                before = shared.usage()
                policy = _score(llms[0], recs, m.mode, descriptions, f"{m.name}/score")
                reference = _score(llms[1], recs, m.mode, descriptions,
                                   f"{m.name}/reference") if with_ref else None
                rows = {m.name: _rows(m.name, recs, policy, reference, protocol, beta)}
                if reference is not None and m.reference_name:
                    rows[m.reference_name] = _rows(m.reference_name, recs, reference, None,
                                                   protocol, beta)
                usage = usage_since(shared.usage(), before)
                result = {"rows": rows, "seconds": time.perf_counter() - start,
                          "usage": usage}
                run.save(unit, result, inputs)
            per_user[user_id][m.name] = result
            bar.update(1)
    bar.close()
    win_records = list(records if win_max_items is None else records[:win_max_items])
    win_md, win_usage = _win_rates(run, shared, models, win_records, descriptions, judge,
                                   judge_consistency, guidelines, gen_max_tokens, progress) \
        if judge is not None and win_records else ("", {})
    user_records = []
    for user_id, results in per_user.items():
        rows = [row for r in results.values() for rs in r["rows"].values() for row in rs]
        user_records.append({
            "user_id": user_id, "n_test": len(by_user[user_id]), "rows": rows, "fits": {},
            "usage": sum_usage([r["usage"] for r in results.values()]),
            "seconds": {name: round(r["seconds"], 2) for name, r in results.items()},
            "wall_s": round(sum(r["seconds"] for r in results.values()), 2)})
    report_meta = {"protocol": protocol, "data": (meta or {}).get("data", "episodes"),
                   "methods": [{"spec": n, "label": n} for n in names],
                   "models": {m.name: f"{m.model} ({m.mode})" for m in models},
                   "seed": 0, "beta": beta, **(meta or {})}
    if win_md:
        report_meta["sections"] = [("Win rate (both orders, ties 0.5)", win_md)]
        report_meta["usage_beyond_users"] = win_usage
    return write_report(out, user_records, report_meta)


def judge_check_markdown(result: dict[str, Any]) -> str:
    """The readable table of :func:`personalign.fspo.data.judge_check.check_judge`'s result."""
    import pandas as pd

    from personalign.bench.report import markdown

    def f(x, digits=3):
        return "-" if x is None else f"{x:.{digits}f}"

    return markdown(pd.DataFrame([{
        "pairs": r["source"], "calibration": "on" if r["consistency"] == "calibrated"
        else "off", "n": r["n"], "accuracy": f(r["accuracy"]), "s.e.": f(r["se"]),
        "order-consistent": f(r["decided"]), "ties": f(r["ties"]),
        "accuracy on decided": f(r["accuracy_on_decided"]), "P(chosen)": f(r["p_chosen"]),
        "bias log-odds A": f(r["position_bias"], 2)} for r in result["table"]]))
