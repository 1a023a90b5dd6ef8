"""Fermi's configuration: every open ([?]) choice of the method spec is a named option.

Defaults follow ``docs/fermi.md``; the two presets of the benchmark protocol are ``paper``
(T=10, K=4, L=5) and ``quick`` (smaller; every report made with it says "quick").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from personalign.runtime.config import Config
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.types import ScoringMethod

TaskType = Literal["choice", "tag", "rating", "title"]

# A sample is mis-aligned when its score is below tau (spec: 1.0 for exact-match style
# scores, 0.2 for ROUGE-L).
DEFAULT_TAU = {"choice": 1.0, "tag": 1.0, "rating": 1.0, "title": 0.2}



@dataclass
class FermiConfig(Config):
    # --- optimization loop (spec step 3)
    iterations: int = 10                     # T
    num_candidates: int = 4                  # K new prompts per iteration (K separate samples)
    memory_size: int = 5                     # L
    optimization_fraction: float = 0.8       # 80/20 split of U_opi (16/4 for 20 opinions)
    mode: Literal["fermi", "opro"] = "fermi"  # "opro": memory of (text, score) only
    # [?] which end of the memory is the reference entry whose failure cases are listed in
    # full: "best" = highest score (rank l=1), "worst" = lowest score (first in ascending order).
    reference_entry: Literal["best", "worst"] = "best"
    # [?] final prompt pool: the K prompts of the last iteration, or the memory's top L.
    final_pool: Literal["last_k", "memory"] = "last_k"
    # With "last_k": also keep the best prompt scored over all iterations (the initial one
    # included) when it is not among the last K.
    include_best: bool = False
    failure_case_cap: int = 8                # full failure cases shown for the reference
    # [?] per task type; a sample is mis-aligned when its score < tau.
    tau: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TAU))
    task_type: TaskType = "choice"
    # --- task model M
    scoring_method: ScoringMethod = "letter"
    # --- optimizer model M_opt
    # How the optimizer is asked for a new prompt. "meta_prompt": the spec's instruction
    # (memory, failure cases, demonstrations; reply in brackets) for a chat model.
    # "continuation": OPRO's list form for a base model: the scored memory as "text:/score:"
    # lines, and the model continues with a new "text:" line.
    optimizer_strategy: Literal["meta_prompt", "continuation"] = "meta_prompt"
    # Replies sampled per iteration; all are scored and the best K enter the memory.
    # None: K (the spec). More samples trade optimizer time for a better K.
    samples_per_iteration: int | None = None
    optimizer_temperature: float = 1.0
    # Beyond the paper, for small task models that follow evidence rather than instructions:
    # each new prompt (Fermi mode) is scored and used with this many optimization questions
    # appended, answered the way the person answered. "failures": the reference entry's
    # failure cases first (other questions fill up); "any": a seeded sample of them all. The
    # optimizer still sees and rewrites the instruction alone. 0: the prompt is the
    # optimizer's text, as in the spec.
    evidence_per_prompt: int = 0
    evidence_from: Literal["failures", "any"] = "failures"
    # Beyond the paper (``fermi+fewshot``): the task model sees this many of the person's
    # past opinions most similar to each question (embeddings), answered, between the prompt
    # and the question, as the few-shot baseline shows them. 0: no shots (the spec).
    # ``context_at_fit``: prompts are also scored that way during optimization (an
    # optimization question is shown its most similar *other* opinions). On 30 dev users it
    # changed Fermi + few-shot by -0.1 [-1.7, +1.3] points at 2.8x its time per user
    # (README), so the shots are added at prediction only unless it is set.
    context_shots: int = 0
    context_at_fit: bool = False
    # Reply budget in optimizer tokens. None: derived each iteration as the longest prompt in
    # memory plus the margin, so a rewrite as long as the prompts it improves on fits. A reply
    # that runs into the budget before its closing bracket is rejected ("cut_off").
    optimizer_max_tokens: int | None = None
    optimizer_token_margin: int = 40
    # Start the optimizer's reply with "[" (backends that render chat prompts to text) and stop
    # at "]": small models then keep the bracket format, and no tokens are spent after the
    # prompt. Off: plain chat messages, the reply parsed as a whole.
    prime_bracket: bool = True
    max_retries: int = 2                     # extra optimizer calls per iteration to fill K
    parse_fallback: Literal["whole_reply", "drop"] = "whole_reply"
    max_prompt_chars: int = 600              # longer parsed prompts are dropped
    min_prompt_chars: int = 8                # shorter ones count as empty
    # --- Retrieval-of-Prompt (inference)
    rop_neighbors: int = 3                   # N~
    # U_opi = optimization + demonstration parts. Correctness of each pool prompt is cached
    # on all of U_opi (the demo split is scored once more at the end) when True, else only
    # on the optimization part.
    rop_include_demo: bool = True
    embedder: str = "all-minilm-l6-v2"
    seed: int = 0
    preset: str = "custom"

    def validate(self) -> None:
        positive = ("iterations", "num_candidates", "memory_size", "failure_case_cap",
                    "rop_neighbors", "max_prompt_chars", "optimizer_token_margin")
        for name in positive:
            if getattr(self, name) < 1 and not (name == "iterations" and self.iterations == 0):
                raise ConfigError(f"FermiConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.optimization_fraction <= 1.0:
            raise ConfigError("FermiConfig.optimization_fraction must be in (0, 1]")
        if self.max_retries < 0:
            raise ConfigError("FermiConfig.max_retries must be >= 0")
        if self.context_shots < 0:
            raise ConfigError(f"FermiConfig.context_shots must be >= 0, got {self.context_shots}")
        if self.evidence_per_prompt < 0:
            raise ConfigError("FermiConfig.evidence_per_prompt must be >= 0, got "
                              f"{self.evidence_per_prompt}")
        if self.samples_per_iteration is not None \
                and self.samples_per_iteration < self.num_candidates:
            raise ConfigError("FermiConfig.samples_per_iteration must be >= num_candidates "
                              f"({self.num_candidates}) or None, got {self.samples_per_iteration}")
        if self.optimizer_max_tokens is not None and self.optimizer_max_tokens < 1:
            raise ConfigError("FermiConfig.optimizer_max_tokens must be >= 1 or None (derived), "
                              f"got {self.optimizer_max_tokens}")
        if self.task_type not in self.tau:
            raise ConfigError(f"FermiConfig.tau has no value for task type {self.task_type!r}")

    @property
    def threshold(self) -> float:
        return float(self.tau[self.task_type])


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"iterations": 10, "num_candidates": 4, "memory_size": 5},
    # quick: what 20 users x 7 methods allow on one CPU thread in about an hour or two
    "quick": {"iterations": 2, "num_candidates": 2, "memory_size": 5},
    "tiny": {"iterations": 1, "num_candidates": 1, "memory_size": 2},
}


def preset(name: str, **overrides: Any) -> FermiConfig:
    """A config from a named preset (``paper``, ``quick``, ``tiny``) plus overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return FermiConfig(**{**PRESETS[name], "preset": name, **overrides})
