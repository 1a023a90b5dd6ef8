"""Per-sample scores per task type and the mis-alignment rule (score < tau)."""

from __future__ import annotations

from personalign.runtime import metrics
from personalign.runtime.data.records import Opinion
from personalign.runtime.errors import ConfigError


def sample_score(task_type: str, pred, gold) -> float:
    """Score of one model answer against the person's answer.

    choice/tag: exact match; rating: 1 - |pred - gold| / 4 on a 1-5 scale (unparseable ->
    farthest rating); title: ROUGE-L F1.
    """
    if task_type in ("choice", "tag"):
        return metrics.exact_match(pred, gold)
    if task_type == "rating":
        return metrics.rating_score(None if pred is None else float(pred), float(gold))
    if task_type == "title":
        return metrics.rouge_l(pred, gold)
    raise ConfigError(f"unknown task type {task_type!r} (choice, tag, rating, title)")


def is_misaligned(score: float, tau: float) -> bool:
    return score < tau


def letter(index: int) -> str:
    return chr(ord("A") + index)


def question_block(question: str, options) -> str:
    """The multiple-choice task prompt, ending right before the answer letter."""
    choices = " ".join(f"({letter(i)}) {o}" for i, o in enumerate(options))
    return f"Question: {question}\nAnswer choices: {choices}\nAnswer:"


def answer_text(options, index) -> str:
    """"(B) Somewhat" for an option index, "(no valid answer)" for None."""
    if index is None:
        return "(no valid answer)"
    return f"({letter(index)}) {options[index]}"


def answered_block(q: Opinion) -> str:
    """A past opinion shown in context, answered the way the task model is scored (letter)."""
    return f"{question_block(q.question, q.options)} {letter(q.answer)}"
