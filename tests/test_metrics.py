"""Shared metrics: exact match, rating score, ROUGE-L, bootstrap intervals."""

import numpy as np
import pytest

from personalign.runtime import metrics


def test_exact_match_and_rating():
    assert metrics.exact_match(1, 1) == 1.0 and metrics.exact_match(None, 1) == 0.0
    assert metrics.exact_match(" Drama", "drama") == 1.0
    assert metrics.rating_score(3, 3) == 1.0 and metrics.rating_score(1, 5) == 0.0
    assert metrics.rating_score(2, 3) == pytest.approx(0.75)
    assert metrics.rating_score(None, 4) == 0.25  # scored as 1, the farthest rating


def test_rouge_l():
    assert metrics.rouge_l("a b c", "a b c") == pytest.approx(1.0)
    assert metrics.rouge_l("", "a b") == 0.0 and metrics.rouge_l(None, "a") == 0.0
    assert metrics.rouge_l("graph neural networks", "neural networks for graphs") > 0.3


def test_mean_ci_contains_mean_and_is_deterministic():
    x = np.linspace(0, 1, 25)
    m, lo, hi = metrics.mean_ci(x, seed=1)
    assert lo < m < hi and m == pytest.approx(0.5)
    assert metrics.mean_ci(x, seed=1) == (m, lo, hi)
    assert metrics.mean_ci([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4, 0.4))


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.6, 30)
    d, lo, hi = metrics.paired_bootstrap_ci(base + 0.1, base)
    assert d == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    noisy = base + 0.05 + rng.normal(0, 0.05, 30)
    d, lo, hi = metrics.paired_bootstrap_ci(noisy, base)
    assert 0 < lo < d < hi
    with pytest.raises(ValueError):
        metrics.paired_bootstrap_ci([1, 2], [1])
