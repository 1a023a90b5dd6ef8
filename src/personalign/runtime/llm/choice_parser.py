"""Tolerant parsing of a generated multiple-choice answer: letter, number or option text."""

from __future__ import annotations

import re
import string

_LETTERS = string.ascii_uppercase


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9$%]+", " ", text.lower()).strip()


def parse_choice(text: str, options: tuple[str, ...] | list[str]) -> int | None:
    """Index of the option ``text`` names, or None when it names none (or several).

    Tries, in order: the full text of an option at the start ("A fair amount" is that option,
    not the letter A); a leading "(B)"/"B)"/"B."/"B"/"**B**" letter (a capital "A" followed by a
    lowercase word is the article); "answer/option/choice is B"; the text of exactly one
    option (longest first); a leading number 1..n or "answer: 2". Never raises.
    """
    if not text:
        return None
    n = len(options)
    if n == 0:
        return None
    valid = _LETTERS[:n]
    # Markdown emphasis and quotes around the answer carry no meaning.
    stripped = text.strip().strip("*_`\"'").strip()
    norm_text = _norm(stripped)
    by_length = sorted(range(n), key=lambda i: -len(options[i]))
    normed = [_norm(o) for o in options]
    for i in by_length:
        if normed[i] and (norm_text == normed[i] or norm_text.startswith(normed[i] + " ")):
            if normed[i][0].isalpha() and len(normed[i].split()[0]) == 1:
                return i  # option text starting with a one-letter word ("A lot", "I agree")
    letter_patterns = [
        (rf"^\(?([{valid}])\)?(?:[.:)\],]|$)", 0),
        (rf"^\(([{valid}])\)", re.IGNORECASE),
        (rf"^([{valid}])\s+(?![a-z])", 0),              # "B Yes", not "A great idea"
        (rf"^\(?([{valid.lower()}])\)?[.:)]?$", 0),      # a lone lowercase letter
        (rf"\b(?:answer|option|choice)(?: choice)?(?: is)?[:\s]*\(?([{valid}])\)?"
         rf"(?:[\s.:)\],]|$)", re.IGNORECASE),
    ]
    for pattern, flags in letter_patterns:
        m = re.search(pattern, stripped, flags=flags)
        if m:
            return valid.index(m.group(1).upper())
    # Longest option first so "Very likely" wins over "Likely".
    hits = [i for i in by_length if normed[i] and norm_text.startswith(normed[i])]
    if hits:
        return hits[0]
    contained = [i for i in by_length if normed[i] and f" {normed[i]} " in f" {norm_text} "]
    if contained:
        # Keep only options not contained in a longer hit ("likely" inside "very likely").
        longest = contained[0]
        others = [i for i in contained[1:] if normed[i] not in normed[longest]]
        if not others:
            return longest
    m = re.match(r"^\(?(\d+)\)?(?:[\s.:)]|$)", stripped) or \
        re.search(r"\banswer(?: is)?[:\s]*\(?(\d+)\)?(?:[\s.:)]|$)", stripped, re.IGNORECASE)
    if m and 1 <= int(m.group(1)) <= n:
        return int(m.group(1)) - 1
    return None
