"""Fermi's baselines on the same task model: random choice, vanilla task prompt, profile
prompt, and few-shot with the user's most similar past opinions (embeddings or BM25).

OPRO and Fermi without RoP are the :class:`~personalign.fermi.optimizer.Fermi` estimator with
``mode="opro"`` and ``predict(..., use_rop=False)``.
"""

from __future__ import annotations

from typing import Sequence

from personalign.fermi.config import TASK_INSTRUCTION
from personalign.fermi.optimizer import choice_item, initial_prompt
from personalign.fermi.retrieval import retrieve, shown
from personalign.fermi.tasks import answered_block, question_block
from personalign.runtime.data.records import Opinion
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


def fewshot_items(shots: Sequence[Opinion], questions: Sequence[Opinion], k: int = 3,
                  retriever: str = "embeddings", embedder=None,
                  shown_as=answered_block) -> list[ChoiceItem]:
    """One item per question with its k retrieved opinions in context; the most similar one
    is placed last, next to the question. ``shown_as`` writes a past opinion with its answer
    (the letter, as the task model is scored; benchmarks try other forms)."""
    items = []
    for q, idx in zip(questions, retrieve(shots, questions, k, retriever, embedder)):
        prefix = "".join(f"{part}\n\n" for part in (shown(shots, idx, shown_as),
                                                     FEWSHOT_INSTRUCTION) if part)
        items.append(ChoiceItem(prefix=prefix, prompt=question_block(q.question, q.options),
                                options=tuple(q.options)))
    return items


def fewshot_predictions(llm: LLM, shots: Sequence[Opinion], questions: Sequence[Opinion],
                        k: int = 3, retriever: str = "embeddings", embedder=None,
                        method: str = "letter") -> list[int | None]:
    results = llm.score_choices(fewshot_items(shots, questions, k, retriever, embedder),
                                method=method)
    return [r.choice for r in results]
