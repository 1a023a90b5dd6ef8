"""Iterative persona refinement (FSPO): where a user's persona does not decide a preference,
choose one side, append a sentence stating that preference to the persona, and re-label all of
the user's pairs with the refined persona.

"Does not decide" = the pair is order-inconsistent or its label entropy is above
``entropy_threshold`` nats. Per round at most ``max_traits`` undecided pairs get a new trait
(one generation call each), then every pair of the user is re-judged (2 judge calls a pair).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

from personalign.fspo.data.judge import Judgment, PairJob, PairwiseJudge
from personalign.runtime.config import Config
from personalign.runtime.data.splits import derive_seed
from personalign.runtime.llm.types import SamplingParams

log = logging.getLogger(__name__)

TRAIT_PROMPT = (
    "A person asked: {question}\n\n"
    "Response 1:\n{chosen}\n\n"
    "Response 2:\n{rejected}\n\n"
    "This person liked Response 1 better than Response 2. In one short sentence, describe the "
    "general taste (style, tone, level of detail or viewpoint) that explains this choice, "
    "without mentioning the responses themselves.\n\n"
    "Sentence: They prefer")
TRAIT_START = "They prefer"


@dataclass
class RefineConfig(Config):
    rounds: int = 1
    max_traits: int = 2
    entropy_threshold: float = 0.6
    choose: Literal["random", "lean"] = "random"  # which side the persona will prefer
    temperature: float = 0.3
    max_tokens: int = 40
    seed: int = 0

    @staticmethod
    def calls(n_pairs: int, cfg: "RefineConfig") -> int:
        """Upper bound of LLM calls for one user with ``n_pairs`` pairs."""
        return cfg.rounds * (cfg.max_traits + PairwiseJudge.calls(n_pairs))


@dataclass
class RefineResult:
    description: str
    traits: list[str] = field(default_factory=list)
    judgments: list[Judgment] = field(default_factory=list)
    rounds_run: int = 0


def undecided(judgments: Sequence[Judgment], threshold: float) -> list[int]:
    return [i for i, j in enumerate(judgments) if not j.consistent or j.entropy > threshold]


def clean_trait(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip().split("\n")[0]).strip(" \"'")
    m = re.search(r"[.!?](\s|$)", text)
    if m:
        text = text[: m.end()].strip()
    if text and text[-1] not in ".!?":
        text += "."
    return text


def propose_traits(llm, jobs: Sequence[PairJob], judgments: Sequence[Judgment],
                   cfg: RefineConfig, user_id: str = "", round_index: int = 0,
                   known: Sequence[str] = ()) -> list[str]:
    """New preference sentences for up to ``max_traits`` undecided pairs (one generation each):
    a side is chosen (seeded coin, or the judge's lean) and the LLM completes "They prefer ..."
    explaining that choice."""
    todo = undecided(judgments, cfg.entropy_threshold)
    rng = random.Random(derive_seed(cfg.seed, user_id, "refine", round_index))
    rng.shuffle(todo)
    added: list[str] = []
    for i in todo[: cfg.max_traits]:
        job, j = jobs[i], judgments[i]
        prefer_x = (rng.random() < 0.5) if cfg.choose == "random" else j.p_x >= 0.5
        chosen, rejected = (job.x, job.y) if prefer_x else (job.y, job.x)
        # Raw text ending in "They prefer": the model completes the sentence.
        prompt = TRAIT_PROMPT.format(question=job.question, chosen=chosen, rejected=rejected)
        params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                                seed=derive_seed(cfg.seed, user_id, round_index, i))
        trait = clean_trait(TRAIT_START + " " + llm.generate([prompt], params)[0][0].lstrip())
        if len(trait) > len(TRAIT_START) + 3 and trait not in known and trait not in added:
            added.append(trait)
    return added


def append_traits(description: str, traits: Sequence[str]) -> str:
    return (description.rstrip() + " " + " ".join(traits)).strip()


def refine_user(llm, judge: PairwiseJudge, description: str, guidelines: str,
                jobs: Sequence[PairJob], judgments: Sequence[Judgment], cfg: RefineConfig,
                user_id: str = "") -> RefineResult:
    """Refine one user's persona; returns the final description, added traits and the
    re-judged pairs (the original judgments when nothing needed refinement)."""
    current = list(judgments)
    result = RefineResult(description, judgments=current)
    for r in range(cfg.rounds):
        added = propose_traits(llm, jobs, current, cfg, user_id, r, result.traits)
        if not added:
            break
        result.traits.extend(added)
        result.description = append_traits(result.description, added)
        current = judge.judge(result.description, guidelines, jobs)
        result.judgments = current
        result.rounds_run = r + 1
    return result
