"""The multiple-choice prompt format every method shares (docs/benchmark.md): the task and
profile instructions, a question with lettered choices ending where the letter is scored, a
past opinion shown with its answer, and the scored item (instruction, shown opinions, question).
"""

from __future__ import annotations

from typing import Sequence

from personalign.runtime.data.records import Opinion
from personalign.runtime.llm.types import ChoiceItem
from personalign.runtime.retrieval import retrieve

TASK_INSTRUCTION = ("Choose the proper answer to the given question among the given answer "
                    "choices.")
PROFILE_INSTRUCTION = ("Based on the demographic information, choose the proper answer to the "
                       "given question among the given answer choices.")
FEWSHOT_INSTRUCTION = ("Based on the above previous questions and answers, choose the proper "
                       "answer to the given question among the given answer choices.")


def letter(index: int) -> str:
    return chr(ord("A") + index)


def choices_text(options: Sequence[str]) -> str:
    """The answer choices as the task prompt lists them: "(A) Yes (B) No"."""
    return " ".join(f"({letter(i)}) {o}" for i, o in enumerate(options))


def question_block(question: str, options) -> str:
    """The multiple-choice task prompt, ending right before the answer letter."""
    return f"Question: {question}\nAnswer choices: {choices_text(options)}\nAnswer:"


def answer_text(options, index) -> str:
    """"(B) Somewhat" for an option index, "(no valid answer)" for None."""
    if index is None:
        return "(no valid answer)"
    return f"({letter(index)}) {options[index]}"


def answered_block(q: Opinion) -> str:
    """A past opinion shown in context, answered the way the task model is scored (letter)."""
    return f"{question_block(q.question, q.options)} {letter(q.answer)}"


def shown(shots: Sequence[Opinion], indices: Sequence[int], shown_as=answered_block) -> str:
    """Retrieved past opinions as the task model sees them, the most similar (first index)
    last, next to the question; ``shown_as`` writes one with its answer."""
    return "\n\n".join(shown_as(shots[i]) for i in reversed(indices))


def profile_prompt(profile: str) -> str:
    """The profile prompt of the Fermi spec (its initial prompt), or the plain task
    instruction when there is no profile."""
    if profile:
        return f"A person can be described as follows: {profile}. {PROFILE_INSTRUCTION}"
    return TASK_INSTRUCTION


def choice_item(prompt: str, question: Opinion, context: str = "") -> ChoiceItem:
    """The scored item: the prompt is the shared prefix (encoded once per prompt);
    ``context`` (past opinions shown for this question) ends the prefix, where the few-shot
    baseline places its shots: prefix and question are tokenized apart, so this keeps the
    tokens (and answers) of the shots as that baseline has them."""
    prefix = "".join(f"{part}\n\n" for part in (prompt, context) if part)
    return ChoiceItem(prefix=prefix, prompt=question_block(question.question, question.options),
                      options=tuple(question.options))


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
