"""Lenient extraction of a new prompt from the optimizer's reply.

Small optimizer models often break the requested format: they omit the brackets, wrap the
text in boilerplate ("Here is a new text:"), nest brackets, or stop before the closing bracket.
Every outcome is named so the run can count it. An "unclosed" text is taken as whole: the
caller has already rejected replies that ran into their token budget (Fermi's "cut_off").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPAN = re.compile(r"\[([^\[\]]*)\]")
_BOILERPLATE = [
    re.compile(p, re.IGNORECASE) for p in (
        r"^\s*(sure|certainly|okay|ok)[,!.]?\s*",
        r"^\s*(here\s+is|here's|below\s+is)\s+(a|the|my)?\s*(new|improved|revised)?\s*"
        r"(text|prompt|instruction|version)?\s*[:.]?\s*",
        r"^\s*(new\s+)?(text|prompt|instruction)\s*:\s*",
    )
]
_QUOTES = "\"'`“”‘’"


@dataclass(frozen=True)
class Parsed:
    """``text`` is the extracted prompt or None; ``how``: brackets, unclosed, fallback, line
    (a continued "text:" line), none."""

    text: str | None
    how: str


def _clean(text: str) -> str:
    text = text.replace("<INS>", " ").replace("</INS>", " ")
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(_QUOTES).strip()


def strip_boilerplate(text: str) -> str:
    out = text.strip()
    for _ in range(3):
        before = out
        for pattern in _BOILERPLATE:
            out = pattern.sub("", out, count=1)
        if out == before:
            break
    return out


def parse_prompt(reply: str, fallback: str = "whole_reply") -> Parsed:
    """The longest ``[...]`` span (innermost brackets); else the text after an unclosed ``[``;
    else (``fallback="whole_reply"``) the reply stripped of boilerplate; else None."""
    reply = reply or ""
    spans = [_clean(m.group(1)) for m in _SPAN.finditer(reply)]
    spans = [s for s in spans if s]
    if spans:
        return Parsed(max(spans, key=len), "brackets")
    if "[" in reply and "]" not in reply[reply.rfind("["):]:
        tail = _clean(reply[reply.rfind("[") + 1:])
        if tail:
            return Parsed(tail, "unclosed")
    if fallback == "whole_reply":
        text = _clean(strip_boilerplate(reply.replace("[", " ").replace("]", " ")))
        return Parsed(text or None, "fallback" if text else "none")
    return Parsed(None, "none")


# The list form's next field, which a model may write on the text's own line.
_SCORE_FIELD = re.compile(r"\s*\bscore:\s*\d+(?:\.\d+)?\s*%?\s*$", re.IGNORECASE)


def parse_continuation(reply: str) -> Parsed:
    """A continued "text:" line: the line itself without a trailing "score: N", cleaned
    (``how`` "line" or "none")."""
    text = _clean(_SCORE_FIELD.sub("", (reply or "").strip().split("\n", 1)[0]))
    return Parsed(text or None, "line" if text else "none")
