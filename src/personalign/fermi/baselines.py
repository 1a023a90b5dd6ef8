"""Fermi's baselines on the same task model: random choice, vanilla task prompt, profile
prompt, and few-shot with the user's most similar past opinions (embeddings or BM25).

OPRO and Fermi without RoP are the :class:`~personalign.fermi.optimizer.Fermi` estimator with
``mode="opro"`` and ``predict(..., use_rop=False)``.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from personalign.fermi.config import TASK_INSTRUCTION
from personalign.fermi.optimizer import choice_item, initial_prompt
from personalign.fermi.tasks import answered_block, question_block
from personalign.runtime.data.records import Opinion
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.base import LLM
from personalign.runtime.llm.types import ChoiceItem

FEWSHOT_INSTRUCTION = ("Based on the above previous questions and answers, choose the proper "
                       "answer to the given question among the given answer choices.")


def random_expected(questions: Sequence[Opinion]) -> list[float]:
    """Expected correctness of a uniform random choice: 1 / #options per question."""
    return [1.0 / len(q.options) for q in questions]


def prompt_predictions(llm: LLM, prompt: str, questions: Sequence[Opinion],
                       method: str = "letter") -> list[int | None]:
    """Answer every question with one fixed prompt as the shared prefix."""
    results = llm.score_choices([choice_item(prompt, q) for q in questions], method=method)
    return [r.choice for r in results]


def vanilla_prompt() -> str:
    return TASK_INSTRUCTION


def profile_prompt(profile: str) -> str:
    return initial_prompt(profile)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def retrieve(shots: Sequence[Opinion], questions: Sequence[Opinion], k: int,
             retriever: str = "embeddings", embedder=None) -> list[list[int]]:
    """Indices of the k most similar shots for each question, most similar first."""
    k = min(k, len(shots))
    if retriever == "embeddings":
        if embedder is None:
            raise ConfigError("few-shot retrieval by embeddings needs an embedder")
        sim = embedder.similarity([q.question for q in questions], [s.question for s in shots])
    elif retriever == "bm25":
        from rank_bm25 import BM25Okapi

        bm25 = BM25Okapi([_tokens(s.question) or [""] for s in shots])
        sim = np.array([bm25.get_scores(_tokens(q.question)) for q in questions])
    else:
        raise ConfigError(f"unknown retriever {retriever!r} (embeddings, bm25)")
    return [list(np.argsort(-row, kind="stable")[:k]) for row in np.atleast_2d(sim)]


def fewshot_items(shots: Sequence[Opinion], questions: Sequence[Opinion], k: int = 3,
                  retriever: str = "embeddings", embedder=None,
                  shown_as=answered_block) -> list[ChoiceItem]:
    """One item per question with its k retrieved opinions in context; the most similar one
    is placed last, next to the question. ``shown_as`` writes a past opinion with its answer
    (the letter, as the task model is scored; benchmarks try other forms)."""
    items = []
    for q, idx in zip(questions, retrieve(shots, questions, k, retriever, embedder)):
        blocks = [shown_as(shots[i]) for i in reversed(idx)]
        prefix = "\n\n".join(blocks + [FEWSHOT_INSTRUCTION]) + "\n\n"
        items.append(ChoiceItem(prefix=prefix, prompt=question_block(q.question, q.options),
                                options=tuple(q.options)))
    return items


def fewshot_predictions(llm: LLM, shots: Sequence[Opinion], questions: Sequence[Opinion],
                        k: int = 3, retriever: str = "embeddings", embedder=None,
                        method: str = "letter") -> list[int | None]:
    results = llm.score_choices(fewshot_items(shots, questions, k, retriever, embedder),
                                method=method)
    return [r.choice for r in results]
