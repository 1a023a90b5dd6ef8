"""Loader for GlobalOpinionQA (Anthropic/llm_global_opinions) in its public CSV format.

Columns: ``question``, ``selections`` (a Python-literal string such as
``"defaultdict(<class 'list'>, {'Nigeria': [0.1, 0.9], ...})"`` or a plain dict literal),
``options`` (a list literal) and ``source``. Each country becomes one :class:`User` whose
answer to a question is the country's majority option; the full share vector is kept in
``Opinion.distribution``. Literals are parsed with :func:`ast.literal_eval`, never ``eval``.
"""

from __future__ import annotations

import ast
import csv
import io
import re
from pathlib import Path
from typing import Any, Iterator

from personalign.runtime.data.records import Opinion, User
from personalign.runtime.data.validate import (finite_number, read_text, require_options,
                                               require_records)
from personalign.runtime.errors import DataError

COLUMNS = ("question", "selections", "options", "source")
_DEFAULTDICT = re.compile(r"^\s*defaultdict\(\s*<class '[A-Za-z_.]+'>\s*,\s*(.*)\)\s*$", re.S)
# pandas/numpy write missing shares as bare nan, which literal_eval does not know.
_NAN = re.compile(r"\bnan\b")


def _literal(text: str, path: Path, line: int, field: str) -> Any:
    try:
        return ast.literal_eval(text)
    # TypeError: an unhashable dict key or set member, e.g. {[1]: 2}.
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        reason = e.msg if isinstance(e, SyntaxError) else str(e)
        raise DataError(f"malformed literal: {reason}", path=str(path), line=line,
                        field=field) from None


def parse_selections(text: str, path: Path, line: int) -> dict[str, list[float]]:
    """``{country: shares}`` from the ``selections`` cell (defaultdict wrapper stripped)."""
    m = _DEFAULTDICT.match(text)
    body = m.group(1) if m else text
    value = _literal(_NAN.sub("None", body), path, line, "selections")
    if not isinstance(value, dict):
        raise DataError(f"expected a dict of country -> shares, got {type(value).__name__}",
                        path=str(path), line=line, field="selections")
    out: dict[str, list[float]] = {}
    for country, shares in value.items():
        field = f"selections[{country!r}]"
        if not isinstance(country, str) or not country.strip():
            raise DataError("country name must be a non-empty string", path=str(path),
                            line=line, field="selections")
        if not isinstance(shares, (list, tuple)) or not shares:
            raise DataError("shares must be a non-empty list", path=str(path), line=line,
                            field=field)
        clean = []
        for s in shares:
            share = 0.0 if s is None else finite_number(s)
            if share is None or share < 0:
                raise DataError(f"share {s!r} is not a non-negative number", path=str(path),
                                line=line, field=field)
            clean.append(share)
        out[country.strip()] = clean
    return out


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(1-based line where the record starts, row) for each CSV record."""
    text = read_text(path)
    if not text.strip():
        require_records(0, path, "questions")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"CSV header lacks column(s) {', '.join(missing)}", path=str(path),
                        line=1, field=missing[0])
    start = reader.line_num + 1
    try:
        for row in reader:
            yield start, row
            start = reader.line_num + 1
    except csv.Error as e:
        # reader.line_num can lag behind (an oversized cell fails before its line is counted).
        raise DataError(f"malformed CSV in the record starting here: {e}", path=str(path),
                        line=start) from None


def _scale_points_as_text(options: Any) -> Any:
    """WVS questions list their middle scale points as numbers (``['Not at all', 2.0, ...]``):
    those become option texts as written; anything else is left for the options check."""
    if not isinstance(options, (list, tuple)):
        return options
    return [str(o) if finite_number(o) is not None else o for o in options]


def load_globalopinionqa(path: str | Path, *, countries: list[str] | None = None,
                         min_opinions: int = 1) -> list[User]:
    """One :class:`User` per country, in first-seen order, with ``profile={"COUNTRY": ...}``."""
    path = Path(path)
    wanted = set(countries) if countries else None
    per_country: dict[str, list[Opinion]] = {}
    seen: dict[tuple, int] = {}
    for line, row in _rows(path):
        if None in row:  # more cells than header columns
            raise DataError("row has more cells than the header", path=str(path), line=line)
        for col in ("question", "selections", "options"):
            if not (row.get(col) or "").strip():
                raise DataError("missing", path=str(path), line=line, field=col)
        question = row["question"].strip()
        source = (row.get("source") or "").strip()
        options = require_options(_scale_points_as_text(
            _literal(row["options"], path, line, "options")), path, line, "options")
        key = (question, options, source)
        if key in seen:
            raise DataError(f"duplicate question (first on line {seen[key]})", path=str(path),
                            line=line, field="question")
        seen[key] = line
        selections = parse_selections(row["selections"], path, line)
        for country, shares in selections.items():
            if len(shares) != len(options):
                raise DataError(f"{len(shares)} shares for {len(options)} options "
                                "(answer index out of range)", path=str(path), line=line,
                                field=f"selections[{country!r}]")
            if wanted is not None and country not in wanted:
                continue
            if sum(shares) <= 0:
                continue  # no respondents: no majority to learn from
            majority = max(range(len(shares)), key=lambda i: shares[i])
            per_country.setdefault(country, []).append(Opinion(
                question=question, options=options, answer=majority,
                qid=f"goqa_{line}", topic=source or None,
                ordinal=None, distribution=tuple(shares)))
    require_records(len(seen), path, "questions")
    return [User(user_id=country, profile={"COUNTRY": country}, opinions=tuple(ops))
            for country, ops in per_country.items() if len(ops) >= min_opinions]
