"""Loader for the OpinionQA JSONL of real Pew respondents (schema: shared data README)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from personalign.runtime.data.records import Opinion, User
from personalign.runtime.errors import DataError
from personalign.runtime.data.validate import read_jsonl, require

# The 12 OpinionQA demographic fields, in the order the profile prompt lists them.
PROFILE_FIELDS = {
    "AGE": "Age", "CITIZEN": "Citizenship", "CREGION": "Region", "EDUCATION": "Education",
    "INCOME": "Income", "MARITAL": "Marital status", "POLIDEOLOGY": "Political ideology",
    "POLPARTY": "Political party", "RACE": "Race", "RELIG": "Religion",
    "RELIGATTEND": "Frequency of religious attendance", "SEX": "Sex",
}


def _opinion(raw: dict, path: Path, line: int, idx: int) -> Opinion:
    where = f"opinions[{idx}]"
    question = require(raw, "question", str, path, line, where)
    options = require(raw, "options", list, path, line, where)
    if not options:
        raise DataError("options is empty", path=str(path), line=line, field=f"{where}.options")
    answer = require(raw, "answer", int, path, line, where)
    if not 0 <= answer < len(options):
        raise DataError(f"answer {answer} is out of range for {len(options)} options",
                        path=str(path), line=line, field=f"{where}.answer")
    ordinal = raw.get("ordinal")
    if ordinal is not None and len(ordinal) != len(options):
        raise DataError(f"ordinal has {len(ordinal)} values for {len(options)} options",
                        path=str(path), line=line, field=f"{where}.ordinal")
    return Opinion(question=question.strip(), options=tuple(str(o) for o in options),
                   answer=answer, qid=raw.get("qid"), topic=raw.get("topic"),
                   ordinal=None if ordinal is None else tuple(ordinal))


def load_opinionqa(path: str | Path, *, drop_refused: bool = True,
                   user_ids: Iterable[str] | None = None) -> list[User]:
    """Users of an OpinionQA JSONL file; "Refused" options dropped (never an answer)."""
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
        if wanted is not None and user_id not in wanted:
            continue
        profile = raw.get("profile") or {}
        if not isinstance(profile, dict):
                raise DataError("profile must be an object", path=str(path), line=line,
                            field="profile")
        opinions = [_opinion(o, path, line, i)
                    for i, o in enumerate(require(raw, "opinions", list, path, line))]
        if drop_refused:
            opinions = [o.without_option("Refused") for o in opinions]
        users.append(User(user_id=user_id, profile={k: str(v) for k, v in profile.items()},
                          opinions=tuple(opinions), description=raw.get("description")))
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
