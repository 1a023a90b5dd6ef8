"""Loader for the OpinionQA JSONL of real Pew respondents (schema: shared data README)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from personalign.runtime.data.records import Opinion, User
from personalign.runtime.data.validate import (finite_number, optional, read_jsonl, require,
                                               require_object, require_options,
                                               require_records)
from personalign.runtime.errors import DataError

# The 12 OpinionQA demographic fields, in the order the profile prompt lists them.
PROFILE_FIELDS = {
    "AGE": "Age", "CITIZEN": "Citizenship", "CREGION": "Region", "EDUCATION": "Education",
    "INCOME": "Income", "MARITAL": "Marital status", "POLIDEOLOGY": "Political ideology",
    "POLPARTY": "Political party", "RACE": "Race", "RELIG": "Religion",
    "RELIGATTEND": "Frequency of religious attendance", "SEX": "Sex",
}
# The option OpinionQA keeps in some lists but never as an answer; dropped on load.
REFUSED = "Refused"


def _ordinal(raw: dict, n_options: int, path: Path, line: int,
             where: str) -> tuple[float | None, ...] | None:
    """One numeric position per option (null for non-substantive options), or None."""
    ordinal = raw.get("ordinal")
    if ordinal is None:
        return None
    field = f"{where}.ordinal"
    if not isinstance(ordinal, list):
        raise DataError(f"expected a list, got {type(ordinal).__name__}", path=str(path),
                        line=line, field=field)
    if len(ordinal) != n_options:
        raise DataError(f"ordinal has {len(ordinal)} values for {n_options} options",
                        path=str(path), line=line, field=field)
    values = []
    for i, value in enumerate(ordinal):
        number = finite_number(value)
        if value is not None and number is None:
            raise DataError(f"{value!r} is not a finite number or null", path=str(path),
                            line=line, field=f"{field}[{i}]")
        values.append(number)
    return tuple(values)


def _opinion(raw: object, path: Path, line: int, idx: int, drop_refused: bool) -> Opinion:
    where = f"opinions[{idx}]"
    raw = require_object(raw, path, line, where)
    question = require(raw, "question", str, path, line, where)
    options = require_options(require(raw, "options", list, path, line, where), path, line,
                              f"{where}.options")
    answer = require(raw, "answer", int, path, line, where)
    if not 0 <= answer < len(options):
        raise DataError(f"answer {answer} is out of range for {len(options)} options",
                        path=str(path), line=line, field=f"{where}.answer")
    if drop_refused and options[answer] == REFUSED:
        raise DataError(f"answer {answer} is the {REFUSED!r} option, which is never an answer",
                        path=str(path), line=line, field=f"{where}.answer")
    opinion = Opinion(question=question.strip(), options=options, answer=answer,
                      qid=optional(raw, "qid", str, path, line, where),
                      topic=optional(raw, "topic", str, path, line, where),
                      ordinal=_ordinal(raw, len(options), path, line, where))
    if not drop_refused:
        return opinion
    opinion = opinion.without_option(REFUSED)
    if len(opinion.options) < 2:
        raise DataError(f"only one option besides {REFUSED!r}: a question needs at least two",
                        path=str(path), line=line, field=f"{where}.options")
    return opinion


def _opinions(raw: dict, path: Path, line: int, drop_refused: bool) -> tuple[Opinion, ...]:
    opinions = []
    first_index: dict[str, int] = {}
    for idx, item in enumerate(require(raw, "opinions", list, path, line)):
        opinion = _opinion(item, path, line, idx, drop_refused)
        if opinion.qid is not None:
            if opinion.qid in first_index:
                raise DataError(f"duplicate qid {opinion.qid!r} (first at "
                                f"opinions[{first_index[opinion.qid]}])", path=str(path),
                                line=line, field=f"opinions[{idx}].qid")
            first_index[opinion.qid] = idx
        opinions.append(opinion)
    return tuple(opinions)


def load_opinionqa(path: str | Path, *, drop_refused: bool = True,
                   user_ids: Iterable[str] | None = None) -> list[User]:
    """Users of an OpinionQA JSONL file; "Refused" options dropped (never an answer).

    Every line is checked, also those of users not in ``user_ids``."""
    path = Path(path)
    wanted = set(user_ids) if user_ids is not None else None
    users: list[User] = []
    seen: dict[str, int] = {}
    for line, raw in read_jsonl(path):
        user_id = require(raw, "user_id", str, path, line)
        if user_id in seen:
            raise DataError(f"duplicate user_id {user_id!r} (first on line {seen[user_id]})",
                            path=str(path), line=line, field="user_id")
        seen[user_id] = line
        profile = {} if raw.get("profile") is None else \
            require_object(raw["profile"], path, line, "profile")
        opinions = _opinions(raw, path, line, drop_refused)
        description = optional(raw, "description", str, path, line)
        if wanted is None or user_id in wanted:
            users.append(User(user_id=user_id, profile={k: str(v) for k, v in profile.items()},
                              opinions=opinions, description=description))
    require_records(len(seen), path, "users")
    return users


def profile_text(profile: dict[str, str]) -> str:
    """"Age: 50-64, Region: Northeast, ..." in the canonical field order, unknown fields last."""
    parts = [f"{label}: {profile[key]}" for key, label in PROFILE_FIELDS.items()
             if key in profile]
    parts += [f"{k}: {v}" for k, v in profile.items() if k not in PROFILE_FIELDS]
    return ", ".join(parts)


def dump_users(users: Iterable[User], path: str | Path) -> None:
    """Write users in the OpinionQA JSONL schema."""
    with open(path, "w", encoding="utf-8") as f:
        for u in users:
            f.write(json.dumps(u.to_dict(), ensure_ascii=False) + "\n")
