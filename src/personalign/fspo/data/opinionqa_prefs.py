"""Protocol ``opinionqa-preferences``: real users' survey answers as preference pairs.

Each opinion (question, options, the user's answer a) gives preference pairs: chosen = option
a, rejected = other options as the rejected-option rule says (``REJECTED_RULES``; the rule is in
each pair's ``meta["rejected_rule"]``, what decided that pair in ``meta["rule"]``):

- ``uniform-other`` (the default for new data): one pair, the rejected option drawn uniformly
  among the other options, seeded by (seed, user, qid). The pair says only which option the
  person picked, so a model must read the person, not the scale.
- ``every-other``: one pair per other option (k - 1 pairs for k options). Several pairs share
  one question, so N shots cover fewer questions, and a training episode may show the query's
  own question among its shots.
- ``ordinal-farthest`` (the rule of data and models made before the choice existed): where the
  answer and at least one other option carry ordinal values, the option farthest from the
  answer's (ties: the lowest index; options without an ordinal value, "Don't know", are not
  candidates): every user's pairs then also teach "avoid the extreme option". Otherwise
  (``rule = "random-other"``) as uniform-other.

Per user, the opinions are in protocol opinionqa-individual's seeded order
(``runtime.data.splits.protocol_order``, which Fermi's benchmark uses too): the first
``n_fewshot`` (20) are U_opi (``meta["part"] = "shots"``), the next ``n_test`` (30) the test
questions (``"test"``). Users with fewer than
``min_opinions`` (25) opinions are skipped and counted.

The prompt is the question followed by its answer choices ("Options: a | b | c"), so the
response (an option's text) is interpretable; ``meta["options"]`` keeps the list for choice
accuracy (argmax over options of the policy's log-likelihood).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from personalign.runtime.data.opinionqa import load_opinionqa, profile_text
from personalign.runtime.data.records import Opinion, PreferencePair, User
from personalign.runtime.data.splits import derive_seed, protocol_order
from personalign.runtime.errors import ConfigError

log = logging.getLogger(__name__)

PROTOCOL = "opinionqa-preferences"


def opinion_prompt(op: Opinion, show_options: bool = True) -> str:
    if not show_options:
        return op.question
    return f"{op.question}\nOptions: " + " | ".join(op.options)


REJECTED_RULES = ("uniform-other", "every-other", "ordinal-farthest")
#: what new data uses (``fspo-data opinionqa --rejected``)
DEFAULT_REJECTED = "uniform-other"
#: the rule of data and models that do not record one (made before the choice existed)
LEGACY_REJECTED = "ordinal-farthest"


def check_rejected(rule: str) -> str:
    if rule not in REJECTED_RULES:
        raise ConfigError(f"unknown rejected-option rule {rule!r}; known: "
                          f"{', '.join(REJECTED_RULES)}")
    return rule


def rejected_options(op: Opinion, rule: str, rng: random.Random) -> list[tuple[int, str]]:
    """[(index of a rejected option, what decided it)] under ``rule``."""
    a = op.answer
    others = [i for i in range(len(op.options)) if i != a]
    if not others:
        raise ValueError(f"question {op.qid!r} has a single option")
    if check_rejected(rule) == "every-other":
        return [(i, rule) for i in others]
    ordinal = op.ordinal
    if rule == "ordinal-farthest" and ordinal is not None and ordinal[a] is not None:
        scored = [(abs(ordinal[i] - ordinal[a]), i) for i in others if ordinal[i] is not None]
        if scored:
            best = max(d for d, _ in scored)
            return [(min(i for d, i in scored if d == best), rule)]
    return [(rng.choice(others), "uniform-other" if rule == "uniform-other" else "random-other")]


def opinion_pairs(user: User, op: Opinion, seed: int = 0, rejected: str = DEFAULT_REJECTED,
                  show_options: bool = True, part: str | None = None,
                  position: int | None = None) -> list[PreferencePair]:
    """The pairs one opinion gives under the rejected-option rule ``rejected``."""
    rng = random.Random(derive_seed(seed, user.user_id, op.qid or op.question))
    return [PreferencePair(
        user_id=user.user_id, prompt=opinion_prompt(op, show_options),
        chosen=op.options[op.answer], rejected=op.options[r],
        user_description=profile_text(user.profile) or None,
        meta={"protocol": PROTOCOL, "rejected_rule": rejected, "rule": rule, "qid": op.qid,
              "topic": op.topic, "options": list(op.options), "answer": op.answer,
              "rejected_index": r, "part": part, "position": position})
        for r, rule in rejected_options(op, rejected, rng)]


def records_rejected_rule(records: Iterable[dict[str, Any]]) -> str | None:
    """The rejected-option rule of episode records made from OpinionQA (their query's meta
    says it; older data, which does not, used ``LEGACY_REJECTED``); None for other data."""
    rules: Counter[str] = Counter()
    for rec in records:
        meta = rec.get("meta") or {}
        query = meta.get("query_meta") or meta
        if isinstance(query, dict) and query.get("protocol") == PROTOCOL:
            rules[query.get("rejected_rule") or LEGACY_REJECTED] += 1
    return rules.most_common(1)[0][0] if rules else None


@dataclass
class OpinionPrefsResult:
    pairs: list[PreferencePair]
    skipped_users: list[str]
    skipped_opinions: int


def opinionqa_preferences(users: Sequence[User], seed: int = 0, n_fewshot: int = 20,
                          n_test: int = 30, min_opinions: int = 25,
                          show_options: bool = True, rejected: str = DEFAULT_REJECTED
                          ) -> OpinionPrefsResult:
    check_rejected(rejected)
    pairs, skipped, bad = [], [], 0
    for user in users:
        if len(user.opinions) < min_opinions:
            skipped.append(user.user_id)
            continue
        ordered = protocol_order(user, seed)[: n_fewshot + n_test]
        for pos, op in enumerate(ordered):
            if len(op.options) < 2:
                bad += 1
                continue
            pairs += opinion_pairs(user, op, seed, rejected, show_options,
                                   "shots" if pos < n_fewshot else "test", pos)
    if skipped:
        log.warning("skipped %d users with fewer than %d opinions", len(skipped), min_opinions)
    return OpinionPrefsResult(pairs, skipped, bad)


def load_opinionqa_preferences(path: str | Path, **kw) -> OpinionPrefsResult:
    return opinionqa_preferences(load_opinionqa(path, drop_refused=True), **kw)
