"""Request and result types of the one LLM interface every backend implements."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal, Union

# A prompt is raw text (completion models) or OpenAI-style chat messages.
Message = dict[str, str]
Prompt = Union[str, list[Message]]

# "letter": log-prob of the option letter at the answer position (prompt must list lettered
# options and end at "Answer:"); "text": summed log-likelihood of the option text as the
# continuation; "generate": sample an answer and parse it (API backends without logprobs).
# Corrections of a small model's prior (runtime.llm.debias): "letter-pride" (letter prior from
# cyclic permutations of a few items per call and option count), "letter-pride-prefix" (the
# same per prefix), "letter-calibrated" (divided by the letter probabilities under
# content-free questions), "text-mean" / "text-char" (text log-likelihood per token / per
# character), "text-pmi" (minus the option's log-likelihood after a bare "Answer:").
ScoringMethod = Literal["letter", "text", "generate", "letter-pride", "letter-pride-prefix",
                        "letter-calibrated", "text-mean", "text-char", "text-pmi"]

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    top_p: float = 1.0
    seed: int = 0
    # Generate all max_tokens past end-of-sequence (vLLM's name; for benchmarks).
    ignore_eos: bool = False


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item to score.

    The scored text is ``prefix + prompt`` followed by the option (letter or text). ``prefix``
    is context shared by many items (an instruction, a candidate prompt, few-shot examples):
    fast backends encode it once and reuse its KV cache.
    """

    prompt: str
    options: tuple[str, ...]
    prefix: str = ""

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(LETTERS[i] for i in range(len(self.options)))


@dataclass
class ChoiceResult:
    """Per-option log-probabilities normalized over the item's options (log-softmax).

    ``choice`` is the argmax, or None when the answer was generated and could not be parsed
    (recorded as invalid, never raised). ``raw`` keeps the generated text where there is one.
    """

    logprobs: list[float]
    choice: int | None
    raw: str | None = None

    @property
    def valid(self) -> bool:
        return self.choice is not None


@dataclass
class Usage:
    """Counts of one backend's work; every run reports them."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    scored_items: int = 0
    seconds: float = 0.0  # wall time inside phase blocks (LLM.phase)
    by_phase: dict[str, "Usage"] = field(default_factory=dict)

    def add(self, calls: int = 0, cache_hits: int = 0, prompt_tokens: int = 0,
            completion_tokens: int = 0, scored_items: int = 0, phase: str | None = None,
            seconds: float = 0.0) -> None:
        self.calls += calls
        self.cache_hits += cache_hits
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.scored_items += scored_items
        self.seconds += seconds
        if phase:
            self.by_phase.setdefault(phase, Usage()).add(
                calls, cache_hits, prompt_tokens, completion_tokens, scored_items,
                seconds=seconds)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in
             ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "scored_items")}
        d["seconds"] = round(self.seconds, 2)
        if self.by_phase:
            d["by_phase"] = {k: v.as_dict() for k, v in self.by_phase.items()}
        return d


def usage_since(after: dict, before: dict) -> dict:
    """What was added between two snapshots of nested usage dicts (``Usage.as_dict``, or
    those of several LLMs by name); a name or phase missing before counts from zero."""
    return {k: usage_since(v, before.get(k, {})) if isinstance(v, dict)
            else v - before.get(k, 0) for k, v in after.items()}
