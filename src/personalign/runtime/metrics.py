"""Per-sample scores and confidence intervals shared by every benchmark.

Scores: exact match (choices, tags), 1 - |pred - gold| / 4 for 1-5 ratings, ROUGE-L F1 for
generated text (``rouge-score``). Intervals: percentile bootstrap (``scipy.stats.bootstrap``)
of a mean, and of a paired mean difference over the same units (users).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np


def exact_match(pred, gold) -> float:
    """1.0 when the prediction equals the gold label (strings compared stripped, casefolded)."""
    if pred is None:
        return 0.0
    if isinstance(pred, str) and isinstance(gold, str):
        return float(pred.strip().casefold() == gold.strip().casefold())
    return float(pred == gold)


def rating_score(pred: float | None, gold: float, low: float = 1.0, high: float = 5.0) -> float:
    """1 - |pred - gold| / (high - low); an unparseable rating (None) counts as the rating
    farthest from gold (LaMP's rule)."""
    span = high - low
    if pred is None:
        pred = low if abs(gold - low) >= abs(gold - high) else high
    return 1.0 - abs(float(pred) - float(gold)) / span


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(pred: str | None, gold: str) -> float:
    """ROUGE-L F1 of a generated text against the reference (0.0 for an empty prediction)."""
    if not pred:
        return 0.0
    return float(_rouge_scorer().score(gold, pred)["rougeL"].fmeasure)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (nan for fewer than two values)."""
    x = np.asarray(values, dtype=float)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def mean_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 9999,
            seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (float("nan"),) * 3
    if len(x) < 2 or np.all(x == x[0]):
        return float(x.mean()), float(x.mean()), float(x.mean())
    from scipy.stats import bootstrap

    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                    method="percentile", random_state=np.random.default_rng(seed))
    return float(x.mean()), float(res.confidence_interval.low), \
        float(res.confidence_interval.high)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                        n_resamples: int = 9999, seed: int = 0) -> tuple[float, float, float]:
    """(mean of a - b, low, high) over paired units, resampling units with replacement."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    return mean_ci(a - b, confidence=confidence, n_resamples=n_resamples, seed=seed)
