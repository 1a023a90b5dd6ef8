"""What each benchmark protocol reads and which questions it asks (docs/benchmark.md).

``opinionqa-individual`` reads OpinionQA respondents as they are. ``globalopinionqa-individual``
reads GlobalOpinionQA countries as users and keeps only substantive options: "Don't know",
"Refused", "Missing ..." and their kin are dropped, the country's shares renormalized over what
remains and its answer recomputed as the majority of those. Both then share the same split
(:func:`personalign.bench.runner.split_user`).

Beside accuracy, a question that carries the population's distribution is scored with the
original work's metric: 1 - W1(model, population) / (n_options - 1), the Wasserstein distance
over the options' ordinal positions normalized by its maximum.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Sequence

from personalign.runtime.data.records import Opinion, User

OPINIONQA = "opinionqa-individual"
GLOBALOPINIONQA = "globalopinionqa-individual"

# Non-substantive options of the Pew (GAS) and WVS questions, matched whole ignoring case;
# WVS's "Missing; Not available" and "Other missing; ..." by the code before the semicolon.
_NON_SUBSTANTIVE = re.compile(
    r"^(don't know|dk/refused|don't know/refused|no answer|no answer/refused|refused"
    r"|(other )?missing(;.*)?)$", re.IGNORECASE)


def is_substantive(option: str) -> bool:
    return not _NON_SUBSTANTIVE.match(option.strip())


def substantive(opinion: Opinion) -> Opinion | None:
    """``opinion`` over its substantive options with the shares renormalized and the answer
    recomputed as their majority; None when fewer than two options or no share remain."""
    keep = [i for i, o in enumerate(opinion.options) if is_substantive(o)]
    if len(keep) < 2:
        return None
    if opinion.distribution is None:
        if opinion.answer not in keep:
            return None
        shares, answer = None, keep.index(opinion.answer)
    else:
        kept = [opinion.distribution[i] for i in keep]
        total = sum(kept)
        if total <= 0:
            return None  # everyone answered "Don't know": nothing substantive to predict
        shares = tuple(s / total for s in kept)
        answer = max(range(len(shares)), key=lambda i: shares[i])
    return Opinion(question=opinion.question, options=tuple(opinion.options[i] for i in keep),
                   answer=answer, qid=opinion.qid, topic=opinion.topic,
                   ordinal=None if opinion.ordinal is None
                   else tuple(opinion.ordinal[i] for i in keep),
                   distribution=shares)


def load_globalopinionqa_users(path: str | Path) -> list[User]:
    """Countries of a GlobalOpinionQA CSV, each over its substantive questions only."""
    from personalign.runtime.data.globalopinionqa import load_globalopinionqa

    users = []
    for user in load_globalopinionqa(path):
        kept = tuple(o for o in map(substantive, user.opinions) if o is not None)
        users.append(User(user.user_id, dict(user.profile), kept, user.description))
    return users


def _load_opinionqa(path: str | Path) -> list[User]:
    from personalign.runtime.data.opinionqa import load_opinionqa

    return load_opinionqa(path)


#: how each protocol reads its users
LOADERS: dict[str, Callable[[str | Path], list[User]]] = {
    OPINIONQA: _load_opinionqa,
    GLOBALOPINIONQA: load_globalopinionqa_users,
}


def load_users(protocol: str, path: str | Path) -> list[User]:
    return LOADERS[protocol](path)


def distribution_similarity(predicted: Sequence[float], target: Sequence[float]) -> float:
    """1 - W1(predicted, target) / (n - 1) over ordinal positions 0..n-1: 1 when the
    distributions agree, 0 when all mass sits on opposite ends."""
    from scipy.stats import wasserstein_distance

    n = len(target)
    if len(predicted) != n or n < 2:
        raise ValueError(f"need two distributions over the same n >= 2 options, got "
                         f"{len(predicted)} and {n}")
    positions = list(range(n))
    return 1.0 - wasserstein_distance(positions, positions, predicted, target) / (n - 1)


def answer_distribution(choice: int | None, logprobs: Sequence[float],
                        n_options: int) -> list[float]:
    """A method's option distribution: its normalized option probabilities, or all mass on
    its choice when it reports none (a parsed generation)."""
    if len(logprobs) == n_options:
        probs = [math.exp(x) for x in logprobs]
        total = sum(probs)
        if total > 0 and math.isfinite(total):
            return [p / total for p in probs]
    if choice is None:
        return [1.0 / n_options] * n_options
    return [float(i == choice) for i in range(n_options)]


def question_metrics(question: Opinion, choice: int | None,
                     logprobs: Sequence[float]) -> dict[str, float]:
    """Per-question metrics beside correctness: the distribution similarity where the
    question carries the population's distribution."""
    if question.distribution is None:
        return {}
    predicted = answer_distribution(choice, logprobs, len(question.options))
    return {"distribution_similarity": round(
        distribution_similarity(predicted, question.distribution), 6)}
