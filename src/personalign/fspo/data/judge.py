"""Pairwise preference judge conditioned on a user's description and scoring guidelines.

Every pair (x, y) is asked in BOTH orders (A=x, B=y and A=y, B=x). The guidelines tell the
judge how length counts (ignored, except where the user's description asks for short or long
reviews). Two ways to ask (``method``):

- ``"letter"`` (default, cheap): one forward pass per order scoring the letters "A"/"B"
  (``LLM.score_choices`` with options ("A", "B")).
- ``"generate"``: the judge writes its answer, which is parsed (API backends without logprobs).

Order consistency (``consistency``):

- ``"strict"``: the argmax must name the same response in both orders; otherwise the pair is
  order-inconsistent and dropped (FSPO).
- ``"calibrated"``: the judge's position bias for the user (its mean log-odds of "A" over all
  of that user's items) is subtracted first, then the same test applies (contextual
  calibration, Zhao et al. 2021); for small judges that answer "A" to almost everything
  (SmolLM2-135M: log-odds of "A" of +1 to +2 whatever the order, so "strict" drops nearly
  every pair).

The user's description is the ``ChoiceItem.prefix``; the question, both responses, the
guidelines, the description once more and "Answer with A or B" follow it, so one user's pairs
share one encoded prefix on backends with prefix caching. An instruct judge (the default, Qwen 1.5B Instruct on llama.cpp)
reads it all as its chat turn and answers with the letter.

``p_x`` = the mean over both orders of the probability that x is preferred; label entropy is
H(p_x) in nats.

:func:`win_rate` uses the same two-order judgment to compare a model's responses with a
baseline's (FSPO evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from personalign.fspo.data.users import ELIX_GUIDELINES, REVIEW_GUIDELINES, ROLEPLAY_GUIDELINES
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.llm.types import ChoiceItem
from personalign.runtime.metrics import standard_error
from personalign.runtime.models import DEFAULT_MODEL

JudgeMethod = Literal["letter", "generate"]
Consistency = Literal["strict", "calibrated"]
Domain = Literal["opinionqa", "elix", "reviews", "roleplay"]

#: The judge of win rates (``fspo eval``) and synthetic labels (``fspo-data synth``): Qwen2.5
#: Coder 1.5B Instruct on llama.cpp, prompted through its chat template. SmolLM2-135M, the
#: judge before it, answered "A" whatever the order (every win rate a tie); this one decides
#: (``personalign fspo judge-check``).
DEFAULT_JUDGE = f"llamacpp:{DEFAULT_MODEL}"
#: Order consistency by default, chosen on known pairs (``fspo judge-check``, Qwen 1.5B): its
#: margins are small beside its lean toward "A" (log-odds +0.3), so "strict" left 78% of the
#: 36 synthetic pairs tied (accuracy 0.58); "calibrated" decided 75% of them, 89% rightly
#: (accuracy 0.79). On 40 OpinionQA pairs: 0.50 strict (all tied), 0.65 calibrated.
DEFAULT_CONSISTENCY: Consistency = "calibrated"

#: What each domain rewards (fspo.md "Synthetic data"); the synthetic users carry the same text.
OPINIONQA_GUIDELINES = ("Prefer the answer this person would most likely give in an opinion "
                        "survey, judging from their background (age, region, education, "
                        "income, politics, religion). Ignore how long or how well written "
                        "either answer is.")
GUIDELINES: dict[str, str] = {"opinionqa": OPINIONQA_GUIDELINES, "elix": ELIX_GUIDELINES,
                              "reviews": REVIEW_GUIDELINES, "roleplay": ROLEPLAY_GUIDELINES}


def domain_guidelines(domain: str | None) -> str:
    """The scoring guidelines of ``domain`` ("" for none)."""
    if domain is None:
        return ""
    if domain not in GUIDELINES:
        raise ConfigError(f"unknown domain {domain!r}; known: {', '.join(GUIDELINES)}")
    return GUIDELINES[domain]


# The user's description comes first (Qwen 1.5B decided known pairs more often so than with it
# after the responses), and is the ``ChoiceItem.prefix``: one user's pairs share its encoding.
# An instruct judge reads prefix + prompt as its user turn and answers with the letter.
JUDGE_PREFIX = "User description: {description}\n\n"

# The description is said again right before the request: on known pairs (Qwen 1.5B,
# calibrated; benchmarks/judge_prompts.py) this decided 28 of 36 pairs, 24 rightly, against 20
# and 17 with the description at the top only (README). How length counts is each domain's
# guideline (ELIX and Reviews differ on it).
JUDGE_PROMPT = (
    "This user asked:\n{question}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "Scoring guidelines: {guidelines}\n"
    "Remember who the user is: {description}\n"
    "Which response fits this user better? Answer with A or B.\nAnswer:")

OPTIONS = ("A", "B")


@dataclass
class PairJob:
    """A pair to judge for one user."""

    question: str
    x: str
    y: str


@dataclass
class Judgment:
    """Outcome for one pair. ``label``: 0 = x preferred, 1 = y preferred, None = inconsistent."""

    label: int | None
    p_x: float
    logodds_xy: float  # log P(A) - log P(B) with x shown as A
    logodds_yx: float  # same with y shown as A
    raw: tuple[str | None, str | None] = (None, None)

    @property
    def consistent(self) -> bool:
        return self.label is not None

    @property
    def win(self) -> float:
        """x's result: 1 won, 0 lost, 0.5 a tie (order-inconsistent or unparsed)."""
        return 0.5 if self.label is None else 1.0 - self.label

    @property
    def entropy(self) -> float:
        return binary_entropy(self.p_x)

    def to_dict(self) -> dict:
        return asdict(self)


def binary_entropy(p: float) -> float:
    """H(p) in nats (0 at p in {0, 1}, ln 2 at 0.5)."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def _logodds(logprobs: Sequence[float], clip: float = 20.0) -> float:
    a, b = logprobs[0], logprobs[1]
    if a == b:
        return 0.0
    if math.isinf(a) or math.isinf(b):
        return clip if a > b else -clip
    return max(-clip, min(clip, a - b))


def decide(logodds_xy: float, logodds_yx: float, bias: float = 0.0) -> int | None:
    """0 if both orders favour x, 1 if both favour y, else None (order-inconsistent).
    ``bias`` is the judge's position bias toward "A", subtracted from both orders."""
    first = logodds_xy - bias       # > 0: x (shown as A) preferred
    second = -(logodds_yx - bias)   # > 0: x (shown as B) preferred
    if first > 0 and second > 0:
        return 0
    if first < 0 and second < 0:
        return 1
    return None


class PairwiseJudge:
    """``judge(description, guidelines, jobs)`` -> one Judgment per job."""

    def __init__(self, llm, method: JudgeMethod = "letter", consistency: Consistency = "strict",
                 prompt: str = JUDGE_PROMPT):
        if method not in ("letter", "generate"):
            raise ConfigError(f"judge method must be 'letter' or 'generate', got {method!r}")
        if consistency not in ("strict", "calibrated"):
            raise ConfigError(f"consistency must be 'strict' or 'calibrated', got "
                              f"{consistency!r}")
        self.llm, self.method, self.consistency, self.prompt = llm, method, consistency, prompt

    @staticmethod
    def items(description: str, guidelines: str, job: PairJob, prompt: str = JUDGE_PROMPT
              ) -> tuple[ChoiceItem, ChoiceItem]:
        """The two orders of one pair for one user (A=x first, then A=y); ``prompt``: a
        template with JUDGE_PROMPT's fields (benchmarks/judge_prompts.py compares some)."""
        description = description.strip() or "not described"
        prefix = JUDGE_PREFIX.format(description=description)
        guidelines = guidelines.strip() or "none"
        return tuple(ChoiceItem(prompt.format(question=job.question, a=a, b=b,
                                              guidelines=guidelines, description=description),
                                OPTIONS, prefix)
                     for a, b in ((job.x, job.y), (job.y, job.x)))

    @staticmethod
    def calls(n_pairs: int) -> int:
        """LLM calls (scored items or generations) to judge ``n_pairs`` pairs."""
        return 2 * n_pairs

    def judge(self, description: str, guidelines: str, jobs: Sequence[PairJob],
              progress: bool = False) -> list[Judgment]:
        """Judgments of one user's pairs (calibration bias: over these pairs)."""
        return self.judge_many([(description, guidelines, j) for j in jobs], progress=progress)

    def score(self, requests: Sequence[tuple[str, str, PairJob]],
              progress: bool = False) -> list[tuple[float, float, bool, str | None, str | None]]:
        """Raw outcome of each (description, guidelines, job) request, both orders, in one
        scoring call (requests of many users; pairs shared by users share their prefix):
        (log-odds A with x as A, log-odds A with y as A, valid, raw answers)."""
        items: list[ChoiceItem] = []
        for description, guidelines, job in requests:
            items.extend(self.items(description, guidelines, job, self.prompt))
        if not items:
            return []
        results = self.llm.score_choices(items, method=self.method, progress=progress)
        out = []
        for k in range(len(requests)):
            r_xy, r_yx = results[2 * k], results[2 * k + 1]
            valid = self.method != "generate" or (r_xy.valid and r_yx.valid)
            out.append((_logodds(r_xy.logprobs), _logodds(r_yx.logprobs), valid, r_xy.raw,
                        r_yx.raw))
        return out

    def finalize(self, outcomes: Sequence[Sequence]) -> list[Judgment]:
        """Judgments of ONE user's outcomes (from :meth:`score`); the calibrated position bias
        is that user's mean log-odds of "A" over all of them."""
        outcomes = [tuple(o) for o in outcomes]
        bias = 0.0
        if self.consistency == "calibrated" and outcomes:
            bias = sum(o[0] + o[1] for o in outcomes) / (2 * len(outcomes))
        out = []
        for lo_xy, lo_yx, valid, raw_xy, raw_yx in outcomes:
            p_x = 0.5 * (_sigmoid(lo_xy - bias) + _sigmoid(-(lo_yx - bias)))
            label = decide(lo_xy, lo_yx, bias) if valid else None
            out.append(Judgment(label, p_x, lo_xy, lo_yx, (raw_xy, raw_yx)))
        return out

    def judge_many(self, requests: Sequence[tuple[str, str, PairJob]],
                   groups: Sequence[str] | None = None,
                   progress: bool = False) -> list[Judgment]:
        """Judgments of requests of possibly many users in one scoring call; calibration is
        per group (default: per description)."""
        outcomes = self.score(requests, progress)
        keys = list(groups) if groups is not None else [r[0] for r in requests]
        by_key: dict[str, list[int]] = {}
        for k, key in enumerate(keys):
            by_key.setdefault(key, []).append(k)
        out: list[Judgment | None] = [None] * len(requests)
        for idx in by_key.values():
            for k, j in zip(idx, self.finalize([outcomes[k] for k in idx])):
                out[k] = j
        return out  # type: ignore[return-value]


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@dataclass
class WinRate:
    """How often responses beat a baseline's: per-item scores, their mean and standard error,
    and how far the judge can be trusted on these items (``consistent``: the share it judged
    the same way in both orders before any calibration; ``ties``: items scored 0.5)."""

    mean: float
    se: float
    n: int
    scores: list[float]
    judge: str
    consistency: Consistency = "strict"
    consistent: float = math.nan
    ties: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"win_rate": self.mean, "se": self.se, "n": self.n, "ties": self.ties,
                "judge_consistent": self.consistent, "consistency": self.consistency,
                "judge": self.judge}


def win_rate(judge_llm, items: Sequence[Mapping[str, str]], method: JudgeMethod = "letter",
             consistency: Consistency = DEFAULT_CONSISTENCY, guidelines: str = "",
             progress: bool = False) -> WinRate:
    """Win rate of ``response`` over ``baseline`` for each item (question, description,
    response, baseline), asked in both orders with the user's description and ``guidelines``:
    two wins 1, two losses 0, anything else (order-inconsistent, a tie, an unparsed answer)
    0.5. ``calibrated``: the judge's position bias is its mean log-odds of "A" over all the
    items (one comparison), not per user: a few items per user would estimate it poorly."""
    if not items:
        raise DataError("no items to judge")
    judge = PairwiseJudge(judge_llm, method, consistency)
    requests = [(it["description"], guidelines,
                 PairJob(it["question"], it["response"], it["baseline"])) for it in items]
    outcomes = judge.score(requests, progress=progress)
    judgments = judge.finalize(outcomes)
    scores = [j.win for j in judgments]  # x: the response
    raw_consistent = [o[2] and decide(o[0], o[1]) is not None for o in outcomes]
    return WinRate(sum(scores) / len(scores), standard_error(scores), len(scores), scores,
                   getattr(judge_llm, "model_id", str(judge_llm)), consistency,
                   sum(raw_consistent) / len(raw_consistent),
                   sum(1 for x in scores if x == 0.5))
