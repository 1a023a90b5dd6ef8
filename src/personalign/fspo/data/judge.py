"""Pairwise preference judge conditioned on a user's description and scoring guidelines.

Every pair (x, y) is asked in BOTH orders (A=x, B=y and A=y, B=x). The judge is told to ignore
length. Two ways to ask (``method``):

- ``"letter"`` (default, cheap): one forward pass per order scoring the letters "A"/"B"
  (``LLM.score_choices`` with options ("A", "B")).
- ``"generate"``: the judge writes its answer, which is parsed (API backends without logprobs).

Order consistency (``consistency``):

- ``"strict"``: the argmax must name the same response in both orders; otherwise the pair is
  order-inconsistent and dropped (FSPO).
- ``"calibrated"``: the judge's position bias (its mean log-odds of "A" over all items judged
  in the same call) is subtracted first, then the same test applies (contextual calibration,
  Zhao et al. 2021); for small judges that answer "A" to almost everything.

``p_x`` = the mean over both orders of the probability that x is preferred; label entropy is
H(p_x) in nats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.types import ChoiceItem

JudgeMethod = Literal["letter", "generate"]
Consistency = Literal["strict", "calibrated"]

JUDGE_PREFIX = (
    "You are deciding which of two responses a specific user would prefer.\n"
    "User description: {description}\n"
    "Scoring guidelines: {guidelines}\n"
    "Judge only by this user's preferences. Ignore the length of the responses: a longer "
    "response is not better because it is longer.\n\n")

JUDGE_PROMPT = (
    "Question: {question}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "Which response would this user prefer?\n(A) Response A\n(B) Response B\nAnswer:")

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
    def entropy(self) -> float:
        return binary_entropy(self.p_x)

    def to_dict(self) -> dict:
        return asdict(self)


def binary_entropy(p: float) -> float:
    """H(p) in nats (0 at p in {0, 1}, ln 2 at 0.5)."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def _prob_a(logprobs: Sequence[float]) -> float:
    a, b = logprobs[0], logprobs[1]
    if a == b:
        return 0.5
    if math.isinf(a) or math.isinf(b):
        return 1.0 if a > b else 0.0
    return 1.0 / (1.0 + math.exp(b - a))


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

    def __init__(self, llm, method: JudgeMethod = "letter", consistency: Consistency = "strict"):
        if method not in ("letter", "generate"):
            raise ConfigError(f"judge method must be 'letter' or 'generate', got {method!r}")
        if consistency not in ("strict", "calibrated"):
            raise ConfigError(f"consistency must be 'strict' or 'calibrated', got "
                              f"{consistency!r}")
        self.llm, self.method, self.consistency = llm, method, consistency

    @staticmethod
    def items(description: str, guidelines: str, job: PairJob) -> tuple[ChoiceItem, ChoiceItem]:
        prefix = JUDGE_PREFIX.format(description=description.strip(),
                                     guidelines=guidelines.strip() or "none")
        xy = ChoiceItem(JUDGE_PROMPT.format(question=job.question, a=job.x, b=job.y), OPTIONS,
                        prefix)
        yx = ChoiceItem(JUDGE_PROMPT.format(question=job.question, a=job.y, b=job.x), OPTIONS,
                        prefix)
        return xy, yx

    @staticmethod
    def calls(n_pairs: int) -> int:
        """LLM calls (scored items or generations) to judge ``n_pairs`` pairs."""
        return 2 * n_pairs

    def judge(self, description: str, guidelines: str, jobs: Sequence[PairJob],
              progress: bool = False) -> list[Judgment]:
        if not jobs:
            return []
        items: list[ChoiceItem] = []
        for job in jobs:
            items.extend(self.items(description, guidelines, job))
        results = self.llm.score_choices(items, method=self.method, progress=progress)
        odds = [_logodds(r.logprobs) for r in results]
        bias = 0.0
        if self.consistency == "calibrated":
            bias = sum(odds) / len(odds)
        out = []
        for k in range(len(jobs)):
            r_xy, r_yx = results[2 * k], results[2 * k + 1]
            lo_xy, lo_yx = odds[2 * k], odds[2 * k + 1]
            if self.consistency == "calibrated":
                p_x = 0.5 * (_sigmoid(lo_xy - bias) + _sigmoid(-(lo_yx - bias)))
            else:
                p_x = 0.5 * (_prob_a(r_xy.logprobs) + 1.0 - _prob_a(r_yx.logprobs))
            invalid = self.method == "generate" and (not r_xy.valid or not r_yx.valid)
            label = None if invalid else decide(lo_xy, lo_yx, bias)
            out.append(Judgment(label, p_x, lo_xy, lo_yx, (r_xy.raw, r_yx.raw)))
        return out


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))
