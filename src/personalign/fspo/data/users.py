"""Synthetic users: ELIX education levels (x persona variants), Reviews users and their
held-out combinations, and generated Roleplay personas.

A user has a description (what the judge is told), scoring guidelines, and a ``steer``: the
instruction that makes a generator write a response this user would like (persona steering).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from personalign.runtime.data.validate import read_jsonl, require
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.storage import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class SyntheticUser:
    user_id: str
    description: str
    domain: str
    guidelines: str = ""
    steer: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    held_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SyntheticUser":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# ------------------------------------------------------------------ ELIX
ELIX_LEVELS = {
    "child": ("a child in elementary school",
              "Explain it like I'm a young child: very simple words, short sentences, a "
              "familiar everyday comparison."),
    "preteen": ("a preteen in middle school",
                "Explain it for a middle-school student: simple words, one concrete example, "
                "no jargon."),
    "teenager": ("a teenager in high school",
                 "Explain it for a high-school student: basic science terms, a clear "
                 "step-by-step explanation."),
    "young adult": ("a young adult in college",
                    "Explain it for a college student: correct terminology and the key "
                    "mechanism in some depth."),
    "expert": ("an expert in the field",
               "Explain it for an expert: precise technical language, mechanisms and nuances, "
               "no simplifications."),
}

# Persona variants crossed with the levels (distinct, still judgeable preferences).
ELIX_VARIANTS = {
    "plain": ("", ""),
    "analogies": ("They like explanations built around an analogy or comparison.",
                  "Use an analogy."),
    "examples": ("They like concrete real-world examples.", "Give a concrete example."),
    "brief": ("They want the answer short and to the point.", "Keep it short."),
    "steps": ("They like explanations broken into clear steps.", "Explain in steps."),
}

ELIX_GUIDELINES = ("Prefer the response whose difficulty, vocabulary and depth match the user's "
                   "education level, and that fits their stated tastes. A response pitched far "
                   "above or below their level is worse. Ignore length unless the user says "
                   "they care about it.")


def elix_users(n_variants: int = 4, levels: Sequence[str] | None = None) -> list[SyntheticUser]:
    """levels x the first ``n_variants`` persona variants (5 x 4 = 20 users by default)."""
    levels = list(levels or ELIX_LEVELS)
    variants = list(ELIX_VARIANTS)[:n_variants]
    if not variants:
        raise ConfigError("need at least one ELIX persona variant")
    users = []
    for level, variant in itertools.product(levels, variants):
        who, steer = ELIX_LEVELS[level]
        taste, steer_extra = ELIX_VARIANTS[variant]
        desc = f"The user is {who}. " + taste
        users.append(SyntheticUser(
            user_id=f"elix-{level.replace(' ', '_')}-{variant}", description=desc.strip(),
            domain="elix", guidelines=ELIX_GUIDELINES,
            steer=f"{steer} {steer_extra}".strip(), attributes={"level": level,
                                                                 "variant": variant}))
    return users


# ------------------------------------------------------------------ Reviews
REVIEW_TRAITS = {
    "positive": ("This user prefers positive reviews.", "Write a positive, enthusiastic review."),
    "negative": ("This user prefers negative reviews.", "Write a negative, critical review."),
    "concise": ("This user prefers concise reviews.", "Write a concise review of two sentences."),
    "verbose": ("This user prefers verbose reviews.",
                "Write a long, detailed review of several paragraphs."),
}
REVIEW_COMBINATIONS = [("positive", "concise"), ("positive", "verbose"),
                       ("negative", "concise"), ("negative", "verbose")]
REVIEW_GUIDELINES = ("Prefer the review whose sentiment and length match what the user "
                     "prefers. Here length is part of the user's preference only if the user "
                     "description mentions conciseness or verbosity.")


def reviews_users(include_held_out: bool = True) -> list[SyntheticUser]:
    """The four trained users and the four held-out ("interpolated") combinations."""
    users = [SyntheticUser(f"reviews-{t}", d, "reviews", REVIEW_GUIDELINES, s, {"traits": [t]})
             for t, (d, s) in REVIEW_TRAITS.items()]
    if include_held_out:
        for a, b in REVIEW_COMBINATIONS:
            users.append(SyntheticUser(
                f"reviews-{a}+{b}", f"This user prefers {a} and {b} reviews.", "reviews",
                REVIEW_GUIDELINES, f"{REVIEW_TRAITS[a][1]} {REVIEW_TRAITS[b][1]}",
                {"traits": [a, b]}, held_out=True))
    return users


# ------------------------------------------------------------------ Roleplay
ROLEPLAY_GUIDELINES = ("Prefer the response this person would find most relevant, agreeable and "
                       "useful given their background, values and tastes. Ignore length.")

_PERSONA_PROMPT = ("Write a short description (two sentences, in the third person) of a "
                   "fictional person: their age, job, values and what kind of answers they "
                   "like. Person number {i}; make them different from typical people. "
                   "Reply with the description only.")


def _clean_line(text: str) -> str:
    text = text.strip().split("\n\n")[0]
    return re.sub(r"\s+", " ", text).strip(" \"'")


def generate_personas(llm, n: int, seed: int = 0, temperature: float = 0.9,
                      max_tokens: int = 80) -> list[SyntheticUser]:
    """``n`` Roleplay personas written by the LLM (one call each; empty outputs retried once
    with another seed, then dropped)."""
    from personalign.runtime.llm.types import SamplingParams

    users = []
    for i in range(n):
        text = ""
        for attempt in range(2):
            params = SamplingParams(temperature=temperature, max_tokens=max_tokens,
                                    seed=seed * 1000 + i * 7 + attempt)
            prompt = [{"role": "user", "content": _PERSONA_PROMPT.format(i=i + 1)}]
            text = _clean_line(llm.generate([prompt], params)[0][0])
            if len(text) > 20:
                break
        if len(text) <= 20:
            log.warning("persona %d: empty generation, dropped", i)
            continue
        users.append(SyntheticUser(f"roleplay-{i:04d}", text, "roleplay", ROLEPLAY_GUIDELINES,
                                   f"Answer as someone who would please this person: {text}"))
    return users


def load_users(path: str | Path) -> list[SyntheticUser]:
    """Users from JSONL: user_id, description (required), domain, guidelines, steer."""
    out = []
    for line, obj in read_jsonl(path):
        require(obj, "user_id", str, path, line)
        require(obj, "description", str, path, line)
        out.append(SyntheticUser.from_dict({"domain": "custom", **obj}))
    if not out:
        raise DataError("no users", path=str(path))
    return out


def make_users(domain: str, n: int | None = None, *, llm=None, seed: int = 0,
               users_file: str | Path | None = None) -> list[SyntheticUser]:
    """Users of a domain. ELIX: n users = levels x variants (n must be a multiple of 5, at most
    25); Reviews: the 4 base users + 4 held-out combinations; Roleplay: n generated personas."""
    if users_file:
        return load_users(users_file)[:n] if n else load_users(users_file)
    if domain == "elix":
        n = n or 20
        if n % len(ELIX_LEVELS) or n > len(ELIX_LEVELS) * len(ELIX_VARIANTS):
            raise ConfigError(f"ELIX users = 5 levels x variants: --users must be 5, 10, ..., "
                              f"{len(ELIX_LEVELS) * len(ELIX_VARIANTS)}, got {n}")
        return elix_users(n // len(ELIX_LEVELS))
    if domain == "reviews":
        users = reviews_users()
        return users[:n] if n else users
    if domain == "roleplay":
        if llm is None:
            raise ConfigError("roleplay personas are generated: an LLM is needed")
        return generate_personas(llm, n or 10, seed)
    raise ConfigError(f"unknown domain {domain!r} (elix, reviews, roleplay)")


def dump_users(users: Sequence[SyntheticUser], path: str | Path) -> None:
    atomic_write_text(path, "".join(json.dumps(u.to_dict(), ensure_ascii=False) + "\n"
                                    for u in users))
