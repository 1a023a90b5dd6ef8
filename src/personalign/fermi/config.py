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
    """Fermi's (and OPRO's) settings; each field's ``help`` is its documentation and the
    command-line help. "[?]" marks a choice the method spec leaves open."""

    # --- optimization loop (spec step 3)
    iterations: int = field(default=10, metadata={
        "help": "T: optimization iterations (0 allowed: no optimization)."})
    num_candidates: int = field(default=4, metadata={
        "help": "K: new prompts per iteration, each from a separate optimizer sample."})
    memory_size: int = field(default=5, metadata={
        "help": "L: prompts kept in the optimizer's memory."})
    optimization_fraction: float = field(default=0.8, metadata={
        "help": "Share of the past opinions U_opi used for optimization; the rest are the "
                "demonstrations (0.8: 16/4 for 20 opinions)."})
    mode: Literal["fermi", "opro"] = field(default="fermi", metadata={
        "help": "fermi, or opro: the memory holds (text, score) pairs only."})
    reference_entry: Literal["best", "worst"] = field(default="best", metadata={
        "help": "[?] Which end of the memory is the reference entry whose failure cases are "
                "listed in full: best = highest score (rank l=1), worst = lowest score (first "
                "in ascending order)."})
    # memory: +4.7 [+0.8, +8.6] points over last_k, Qwen 1.5B, 12 dev users (README)
    final_pool: Literal["last_k", "memory", "memory+initial"] = field(
        default="memory", metadata={
            "help": "[?] The final prompt pool: the memory's top L (memory), that plus the "
                    "initial profile prompt when rewrites pushed it out (memory+initial), or "
                    "the K prompts of the last iteration (last_k)."})
    include_best: bool = field(default=False, metadata={
        "help": "With final_pool last_k: also keep the best prompt scored over all "
                "iterations (the initial one included) when it is not among the last K."})
    failure_case_cap: int = field(default=8, metadata={
        "help": "Full failure cases shown for the reference entry."})
    tau: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TAU), metadata={
        "help": "[?] Per task type: a sample is mis-aligned when its score is below tau."})
    task_type: TaskType = field(default="choice", metadata={
        "help": "The task type, which picks tau."})
    # --- task model M
    scoring_method: ScoringMethod = field(default="letter", metadata={
        "help": "How choices are read from the task model."})
    # --- optimizer model M_opt
    optimizer_strategy: Literal["meta_prompt", "continuation"] = field(
        default="meta_prompt", metadata={
            "help": "How the optimizer is asked for a new prompt. meta_prompt: the spec's "
                    "instruction (memory, failure cases, demonstrations; reply in brackets) "
                    "for a chat model. continuation: OPRO's list form for a base model: the "
                    "scored memory as \"text:/score:\" lines, and the model continues with a "
                    "new \"text:\" line."})
    samples_per_iteration: int | None = field(default=None, metadata={
        "help": "Optimizer replies sampled per iteration; all are scored and the best K enter "
                "the memory. None: K (the spec). More samples trade optimizer time for a "
                "better K."})
    optimizer_temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature of the optimizer model."})
    evidence_per_prompt: int = field(default=0, metadata={
        "help": "Beyond the paper, for small task models that follow evidence rather than "
                "instructions: each new prompt (Fermi mode) is scored and used with this many "
                "optimization questions appended, answered the way the person answered. The "
                "optimizer still sees and rewrites the instruction alone. 0: the prompt is the "
                "optimizer's text, as in the spec."})
    evidence_from: Literal["failures", "any"] = field(default="failures", metadata={
        "help": "Which questions evidence_per_prompt appends. failures: the reference entry's "
                "failure cases first (other questions fill up); any: a seeded sample of them "
                "all."})
    context_shots: int = field(default=0, metadata={
        "help": "Beyond the paper (fermi+fewshot): the task model sees this many of the "
                "person's past opinions most similar to each question (embeddings), answered, "
                "between the prompt and the question, as the few-shot baseline shows them. 0: "
                "no shots (the spec)."})
    context_at_fit: bool = field(default=False, metadata={
        "help": "With context_shots: prompts are also scored that way during optimization (an "
                "optimization question is shown its most similar other opinions). Off: the "
                "shots are added at prediction only; on 30 dev users this changed Fermi + "
                "few-shot by -0.1 [-1.7, +1.3] points at 2.8x its time per user (README)."})
    optimizer_max_tokens: int | None = field(default=None, metadata={
        "help": "Reply budget in optimizer tokens. None: derived each iteration as the longest "
                "prompt in memory plus optimizer_token_margin, so a rewrite as long as the "
                "prompts it improves on fits. A reply that runs into the budget before its "
                "closing bracket is rejected (cut_off)."})
    optimizer_token_margin: int = field(default=40, metadata={
        "help": "Tokens added to the longest prompt in memory for the derived reply budget."})
    prime_bracket: bool = field(default=True, metadata={
        "help": "Start the optimizer's reply with \"[\" (backends that render chat prompts to "
                "text) and stop at \"]\": small models then keep the bracket format, and no "
                "tokens are spent after the prompt. Off: plain chat messages, the reply parsed "
                "as a whole."})
    max_retries: int = field(default=2, metadata={
        "help": "Extra optimizer calls per iteration to fill K."})
    parse_fallback: Literal["whole_reply", "drop"] = field(default="whole_reply", metadata={
        "help": "A reply with no bracketed prompt: its text stripped of boilerplate "
                "(whole_reply) or nothing (drop)."})
    max_prompt_chars: int = field(default=600, metadata={
        "help": "Longer parsed prompts are dropped."})
    min_prompt_chars: int = field(default=8, metadata={
        "help": "Shorter parsed prompts count as empty."})
    # --- Retrieval-of-Prompt (inference)
    rop_neighbors: int = field(default=3, metadata={
        "help": "N~: Retrieval-of-Prompt answers a question with the pool prompt of the best "
                "mean correctness on its N~ most similar past opinions."})
    rop_include_demo: bool = field(default=True, metadata={
        "help": "U_opi = optimization + demonstration parts. On: each pool prompt's "
                "correctness is cached on all of U_opi (the demonstrations scored once more "
                "at the end); off: on the optimization part only."})
    embedder: str = field(default="all-minilm-l6-v2", metadata={
        "help": "The sentence embedder's name (recorded with the config)."})
    seed: int = field(default=0, metadata={
        "help": "Seed of the optimizer's samples and the evidence sample."})
    preset: str = field(default="custom", metadata={
        "help": "The preset the config came from (reports name it)."})

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

    @property
    def replies_per_iteration(self) -> int:
        """Optimizer replies sampled each iteration (``samples_per_iteration``, else K)."""
        return self.samples_per_iteration or self.num_candidates

    @property
    def pool_size(self) -> int:
        """Prompts in the final pool, at most: the last K (and the best one kept beside
        them), or the memory's top L (and the initial prompt kept beside them)."""
        if self.final_pool == "last_k":
            return self.num_candidates + int(self.include_best)
        return self.memory_size + int(self.final_pool == "memory+initial")


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
