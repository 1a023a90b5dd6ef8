"""Corrections of a small model's choice scores for priors that are not about the content.

Small base models give option letters (and short, frequent option texts) a prior that swamps
the prompt (see ``docs/scoring.md`` in the shared docs). The functions here are pure: they
rewrite items for the extra passes a correction needs and turn log-probs into corrected,
normalized log-probs; ``LLM.score_choices`` and the backends run the passes.

- PriDe (Zheng et al., ICLR 2024): prior(letter) from cyclic permutations of the options of a
  few items, then log P(letter) - log prior(letter) for every item.
- Contextual calibration (Zhao et al., ICML 2021): divide by the letter probabilities the
  model gives when a content-free input stands in place of the question.
- Option-text scoring: mean log-prob per token or per character, and domain-conditional PMI
  (Holtzman et al., EMNLP 2021): minus log P(option | a premise without the question).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence

import numpy as np

from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.cache import cache_key
from personalign.runtime.llm.types import LETTERS, ChoiceItem

# Share of a group's items scored under every cyclic permutation (the paper's 5%); at least
# one item per group.
PRIDE_SHARE = 0.05
CONTENT_FREE = ("N/A", "", "[MASK]")
PMI_PREMISE = "Answer:"
LETTER_CORRECTIONS = ("letter-pride", "letter-pride-prefix", "letter-calibrated")
TEXT_CORRECTIONS = ("text-mean", "text-char", "text-pmi")
# How far before an option's text its letter marker may start: "(B) ", "B. ", "\nB) ".
_MARKER_WIDTH = 6


def log_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    shifted = x - x.max()
    return shifted - math.log(np.exp(shifted).sum())


# ---------------------------------------------------------------------- item rewriting
def option_spans(item: ChoiceItem) -> list[tuple[int, int]]:
    """Where each option's text is listed in ``item.prompt``, found from the end backwards (the
    list follows the question, which may contain an option's words) and checked against its
    letter marker just before it; ConfigError when the prompt does not list them that way."""
    spans: list[tuple[int, int]] = []
    end = len(item.prompt)
    for i in reversed(range(len(item.options))):
        start = item.prompt.rfind(item.options[i], 0, end)
        if start < 0 or LETTERS[i] not in item.prompt[max(0, start - _MARKER_WIDTH):start]:
            raise ConfigError("letter debiasing needs the prompt to list each option after its "
                              f"letter, in order; option {LETTERS[i]} {item.options[i]!r} is "
                              f"not found that way in {item.prompt[-200:]!r}")
        spans.append((start, start + len(item.options[i])))
        end = start
    return spans[::-1]


def cyclic_permutation(item: ChoiceItem, shift: int) -> ChoiceItem:
    """The item with its listed options rotated: letter j shows option (j + shift) mod n.
    ``options`` stay in the original order, so log-probs come back per letter."""
    spans = option_spans(item)
    n = len(item.options)
    parts, last = [], 0
    for j, (start, end) in enumerate(spans):
        parts += [item.prompt[last:start], item.options[(j + shift) % n]]
        last = end
    parts.append(item.prompt[last:])
    return ChoiceItem(prompt="".join(parts), options=item.options, prefix=item.prefix)


def content_free(item: ChoiceItem, filler: str) -> ChoiceItem:
    """The item with ``filler`` in place of the question: the lines before the option list,
    keeping a leading label such as "Question:". The options stay listed."""
    first = option_spans(item)[0][0]
    line_start = item.prompt.rfind("\n", 0, first) + 1
    if line_start == 0:
        raise ConfigError("contextual calibration needs the question on lines before the "
                          f"option list; got {item.prompt[:200]!r}")
    label = re.match(r"[^\n:]{0,40}:[ \t]*", item.prompt)
    head = f"{label.group(0) if label else ''}{filler}".rstrip()
    return ChoiceItem(prompt=f"{head}\n{item.prompt[line_start:]}", options=item.options,
                      prefix=item.prefix)


# ---------------------------------------------------------------------- PriDe
def pride_group(item: ChoiceItem, per_prefix: bool) -> Hashable:
    """Items sharing one letter prior: same number of options (a 3-letter prior is not a
    5-letter one) and, when ``per_prefix``, the same prefix (a prompt can shift the prior)."""
    return (len(item.options), item.prefix if per_prefix else None)


def estimation_items(items: Sequence[ChoiceItem], per_prefix: bool,
                     share: float = PRIDE_SHARE) -> dict[Hashable, tuple[ChoiceItem, ...]]:
    """Per group, the items whose permutations estimate the prior: a share of the distinct
    items, picked by a hash of their content so the choice does not depend on their order."""
    groups: dict[Hashable, dict[str, ChoiceItem]] = {}
    for it in items:
        groups.setdefault(pride_group(it, per_prefix), {})[cache_key(it)] = it
    chosen = {}
    for group, by_hash in groups.items():
        count = max(1, math.ceil(share * len(by_hash)))
        chosen[group] = tuple(by_hash[h] for h in sorted(by_hash)[:count])
    return chosen


def item_prior(permuted_logprobs) -> np.ndarray:
    """Log prior over letters from one item's normalized letter log-probs under its n cyclic
    permutations (rows): every option visits every letter once, so the mean log-prob of a
    letter is its prior plus a constant."""
    return log_softmax(np.asarray(permuted_logprobs, dtype=float).mean(axis=0))


def pooled_prior(item_priors: Sequence[np.ndarray]) -> np.ndarray:
    """One log prior from several items' priors (mean of the probabilities)."""
    return np.log(np.mean(np.exp(np.asarray(item_priors, dtype=float)), axis=0))


def permutation_content(permuted_logprobs) -> np.ndarray:
    """Normalized log-probs per option of an item scored under all n cyclic permutations:
    the mean over permutations of the log-prob of the letter the option sat at (the letter
    prior is the same for every option then, so it cancels)."""
    lp = np.asarray(permuted_logprobs, dtype=float)
    n = lp.shape[1]
    # Under shift k, option i sits at letter (i - k) mod n.
    return log_softmax([np.mean([lp[k, (i - k) % n] for k in range(n)]) for i in range(n)])


def remove_prior(logprobs, log_prior) -> np.ndarray:
    """PriDe's prediction: log P(letter) - log prior(letter), renormalized."""
    return log_softmax(np.asarray(logprobs, dtype=float) - np.asarray(log_prior, dtype=float))


# ---------------------------------------------------------------------- calibration
def calibrate(logprobs, content_free_logprobs: Sequence) -> np.ndarray:
    """argmax(p / p_cf): p_cf is the mean of the normalized probabilities under the
    content-free inputs."""
    p_cf = np.mean(np.exp(np.asarray(content_free_logprobs, dtype=float)), axis=0)
    return log_softmax(np.asarray(logprobs, dtype=float) - np.log(p_cf))


# ---------------------------------------------------------------------- option text
def per_unit(sums, units) -> np.ndarray:
    """Mean log-prob per token (or per character) of each option's text, normalized."""
    return log_softmax(np.asarray(sums, dtype=float) / np.asarray(units, dtype=float))


def pmi(sums, premise_sums) -> np.ndarray:
    """log P(option | question) - log P(option | premise), normalized."""
    return log_softmax(np.asarray(sums, dtype=float) - np.asarray(premise_sums, dtype=float))
