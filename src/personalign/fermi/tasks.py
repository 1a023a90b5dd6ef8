"""Per-sample scores per task type and the mis-alignment rule (score < tau)."""

from __future__ import annotations

from personalign.runtime import metrics
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

