"""How far a pairwise judge can be trusted: its verdicts on pairs whose answer is known.

Two sources of known pairs:

- ``opinionqa``: OpinionQA preference pairs of a few users (``fspo.data.opinionqa_prefs``):
  chosen = the person's answer, rejected = another option, description = their profile text.
  Hard: a profile says little about one answer; a judge well above 0.5 here is doing well.
- ``synthetic``: the packaged ``data/judge_known_pairs.jsonl``, pairs built so that one side
  plainly fits the persona (ELIX: a 5-year-old vs a PhD physicist, a retired farmer vs a
  chemistry student, simple vs technical answers; Reviews: an enthusiast vs a harsh critic, a
  commuter who wants one line vs a gadget fan who wants every detail; Roleplay: an activist
  vs a rancher, a churchgoing grandmother vs a startup founder). Every question appears once
  for each of two opposite users with the sides swapped, so a judge that ignores the
  description scores 0.5. The last 12 (farmer, commuter, grandmother and their opposites)
  were written after the judge's prompt was chosen on the first 24, to check that choice.

Each pair is scored once in both orders; the verdicts with calibration off (``strict``) and on
(``calibrated``, the position bias over the source's pairs, as ``win_rate`` removes it) come
from the same scores. Reported per source and rule: ``accuracy`` (the chosen side's win rate:
right 1, tie 0.5, wrong 0), ``decided`` (the share judged the same way in both orders, i.e.
order consistency), ``ties`` (1 - decided), ``accuracy on decided`` and the judge's position
bias (its mean log-odds of answering "A").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence, get_args

from personalign.fspo.data.judge import (
    JUDGE_PROMPT, Consistency, JudgeMethod, PairJob, PairwiseJudge, domain_guidelines,
)
from personalign.runtime.errors import DataError
from personalign.runtime.metrics import standard_error

KNOWN_PAIRS_FILE = "judge_known_pairs.jsonl"


@dataclass(frozen=True)
class KnownPair:
    """A pair whose preferred side is known for the user described."""

    pair_id: str
    source: str
    description: str
    guidelines: str
    question: str
    chosen: str
    rejected: str


def synthetic_known_pairs(limit: int | None = None) -> list[KnownPair]:
    """The packaged synthetic pairs (in file order; ``limit``: the first N)."""
    text = resources.files("personalign").joinpath("data", KNOWN_PAIRS_FILE).read_text(
        encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [KnownPair(r["id"], "synthetic", r["description"], domain_guidelines(r["domain"]),
                      r["question"], r["chosen"], r["rejected"])
            for r in rows[: limit or None]]


def opinionqa_known_pairs(path: str | Path, users: int = 8, per_user: int = 5,
                          seed: int = 0) -> list[KnownPair]:
    """``per_user`` test pairs of each of the first ``users`` users of an OpinionQA file."""
    from personalign.fspo.data.opinionqa_prefs import load_opinionqa_preferences

    by_user: dict[str, list] = {}
    for p in load_opinionqa_preferences(path, seed=seed).pairs:
        if p.meta.get("part") == "test" and p.user_description:
            by_user.setdefault(p.user_id, []).append(p)
    picked = [p for rows in list(by_user.values())[:users] for p in rows[:per_user]]
    if not picked:
        raise DataError("no OpinionQA pairs with a profile", path=str(path))
    guidelines = domain_guidelines("opinionqa")
    return [KnownPair(f"{p.user_id}/{p.meta['qid']}", "opinionqa", p.user_description,
                      guidelines, p.prompt, p.chosen, p.rejected) for p in picked]


def _metrics(outcomes: Sequence[tuple], judge: PairwiseJudge) -> dict[str, Any]:
    """Metrics of one source's outcomes (x = chosen) under ``judge.consistency``."""
    judgments = judge.finalize(outcomes)
    scores = [j.win for j in judgments]  # x: the chosen side
    decided = [s for s in scores if s != 0.5]
    return {"n": len(scores), "accuracy": sum(scores) / len(scores),
            "se": standard_error(scores), "decided": len(decided) / len(scores),
            "ties": 1 - len(decided) / len(scores),
            "accuracy_on_decided": sum(decided) / len(decided) if decided else None,
            "p_chosen": sum(j.p_x for j in judgments) / len(judgments),
            "position_bias": sum(o[0] + o[1] for o in outcomes) / (2 * len(outcomes))}


def check_judge(judge_llm, pairs: Sequence[KnownPair], method: JudgeMethod = "letter",
                prompt: str = JUDGE_PROMPT) -> dict[str, Any]:
    """Score every pair in both orders once; metrics per source with calibration off and on,
    and each pair's raw outcome. ``prompt``: the judge's template (the default's)."""
    if not pairs:
        raise DataError("no known pairs to judge")
    judge = PairwiseJudge(judge_llm, method, prompt=prompt)
    outcomes = judge.score([(p.description, p.guidelines,
                             PairJob(p.question, p.chosen, p.rejected)) for p in pairs])
    rows = []
    for source in dict.fromkeys(p.source for p in pairs):
        mine = [o for p, o in zip(pairs, outcomes) if p.source == source]
        for consistency in get_args(Consistency):  # the bias: over the source's pairs
            rule = PairwiseJudge(judge_llm, method, consistency)
            rows.append({"source": source, "consistency": consistency} | _metrics(mine, rule))
    return {"judge": getattr(judge_llm, "model_id", str(judge_llm)), "method": method,
            "table": rows,
            "pairs": [asdict(p) | {"logodds_chosen_first": o[0], "logodds_rejected_first": o[1]}
                      for p, o in zip(pairs, outcomes)]}
