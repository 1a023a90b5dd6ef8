"""Tolerant parsing of a generated multiple-choice answer: letter, number or option text."""

from __future__ import annotations

import re
import string

_LETTERS = string.ascii_uppercase


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9$%]+", " ", text.lower()).strip()


def parse_choice(text: str, options: tuple[str, ...] | list[str]) -> int | None:
    """Index of the option ``text`` names, or None when it names none (or several).

    Tries, in order: a leading "(B)"/"B)"/"B."/"B" letter; "answer is B"; the full text of
    exactly one option; a leading number 1..n. Never raises.
    """
    if not text:
        return None
    n = len(options)
    valid = _LETTERS[:n]
    stripped = text.strip()
    patterns = [
        rf"^\(?([{valid}])\)?(?:[\s.:)\],]|$)",
        rf"\banswer(?: choice)?(?: is)?[:\s]*\(?([{valid}])\)?(?:[\s.:)\],]|$)",
        rf"^\**\(([{valid}])\)",
    ]
    for pattern in patterns:
        m = re.search(pattern, stripped, flags=re.IGNORECASE if pattern != patterns[0] else 0)
        if m:
            return valid.index(m.group(1).upper())
    norm_text = _norm(stripped)
    # Longest option first so "Very likely" wins over "Likely".
    by_length = sorted(range(n), key=lambda i: -len(options[i]))
    hits = [i for i in by_length if _norm(options[i]) and norm_text.startswith(_norm(options[i]))]
    if hits:
        return hits[0]
    contained = [i for i in by_length if _norm(options[i]) and f" {_norm(options[i])} "
                 in f" {norm_text} "]
    if len(contained) >= 1:
        # Keep only options not contained in a longer hit ("likely" inside "very likely").
        longest = contained[0]
        others = [i for i in contained[1:] if _norm(options[i]) not in _norm(options[longest])]
        if not others:
            return longest
    m = re.match(r"^\(?(\d+)\)?(?:[\s.:)]|$)", stripped)
    if m and 1 <= int(m.group(1)) <= n:
        return int(m.group(1)) - 1
    return None
