"""Protocol ``opinionqa-preferences``: real users' survey answers as preference pairs.

Each opinion (question, options, the user's answer a) gives one pair: chosen = option a,
rejected = another option. Rule (recorded in each row's ``meta["rule"]``):

- ``ordinal-farthest``: the answer and at least one other option carry ordinal values; the
  rejected option is the one whose ordinal value is farthest from the answer's (ties: the
  lowest option index). Options without an ordinal value ("Don't know") are not candidates.
- ``random-other``: otherwise, an option other than a drawn with a seed from (seed, user, qid).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from personalign.runtime.data.opinionqa import load_opinionqa, profile_text
from personalign.runtime.data.records import Opinion, PreferencePair, User
from personalign.runtime.data.splits import derive_seed, protocol_order

log = logging.getLogger(__name__)

PROTOCOL = "opinionqa-preferences"


def opinion_prompt(op: Opinion, show_options: bool = True) -> str:
    if not show_options:
        return op.question
    return f"{op.question}\nOptions: " + " | ".join(op.options)


def rejected_option(op: Opinion, rng: random.Random) -> tuple[int, str]:
    """(index of the rejected option, rule name)."""
    a = op.answer
    others = [i for i in range(len(op.options)) if i != a]
    if not others:
        raise ValueError(f"question {op.qid!r} has a single option")
    ordinal = op.ordinal
    if ordinal is not None and ordinal[a] is not None:
        scored = [(abs(ordinal[i] - ordinal[a]), i) for i in others if ordinal[i] is not None]
        if scored:
            best = max(d for d, _ in scored)
            return min(i for d, i in scored if d == best), "ordinal-farthest"
    return rng.choice(others), "random-other"


def opinion_pair(user: User, op: Opinion, seed: int = 0, show_options: bool = True,
                 part: str | None = None, position: int | None = None) -> PreferencePair:
    rng = random.Random(derive_seed(seed, user.user_id, op.qid or op.question))
    r, rule = rejected_option(op, rng)
    return PreferencePair(
        user_id=user.user_id, prompt=opinion_prompt(op, show_options),
        chosen=op.options[op.answer], rejected=op.options[r],
        user_description=profile_text(user.profile) or None,
        meta={"protocol": PROTOCOL, "rule": rule, "qid": op.qid, "topic": op.topic,
              "options": list(op.options), "answer": op.answer, "rejected_index": r,
              "part": part, "position": position})


@dataclass
class OpinionPrefsResult:
    pairs: list[PreferencePair]
    skipped_users: list[str]
    skipped_opinions: int


def opinionqa_preferences(users: Sequence[User], seed: int = 0, n_fewshot: int = 20,
                          n_test: int = 30, min_opinions: int = 25,
                          show_options: bool = True) -> OpinionPrefsResult:
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
            pairs.append(opinion_pair(user, op, seed, show_options,
                                      "shots" if pos < n_fewshot else "test", pos))
    if skipped:
        log.warning("skipped %d users with fewer than %d opinions", len(skipped), min_opinions)
    return OpinionPrefsResult(pairs, skipped, bad)


def load_opinionqa_preferences(path: str | Path, **kw) -> OpinionPrefsResult:
    return opinionqa_preferences(load_opinionqa(path, drop_refused=True), **kw)
