"""Loaders for the released FSPO datasets, from local files (JSONL, JSON list or parquet).

- Reviews / ELIX rows: ``prompt, response_x, response_y, level_x, level_y, scorer_level,
  label``. ``label == 0`` means response_x is preferred (as in the authors' loader), 1 means
  response_y. The user is ``scorer_level``; the rejected side's description names the level of
  the rejected response.
- Roleplay rows: ``x, yw, yl, level`` (the user id) and ``score_persona.persona_description``
  (a nested object, or a flattened ``score_persona.persona_description`` column).

Bad rows raise DataError naming the file, the (1-based) line or row and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from personalign.runtime.data.records import PreferencePair
from personalign.runtime.data.validate import read_jsonl, read_text, require
from personalign.runtime.errors import DataError

REVIEW_DESCRIPTIONS = {
    "negative": "This user prefers negative reviews.",
    "positive": "This user prefers positive reviews.",
    "concise": "This user prefers concise reviews.",
    "verbose": "This user prefers verbose reviews.",
    "positive+concise": "This user prefers positive and concise reviews.",
    "negative+concise": "This user prefers negative and concise reviews.",
    "positive+verbose": "This user prefers positive and verbose reviews.",
    "negative+verbose": "This user prefers negative and verbose reviews.",
}


def _rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=str(path))
    if path.suffix == ".parquet":
        import pandas as pd

        for i, row in enumerate(pd.read_parquet(path).to_dict("records"), start=1):
            yield i, row
    elif path.suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg}", path=str(path), line=e.lineno) from None
        if not isinstance(data, list):
            raise DataError("expected a JSON list of rows", path=str(path))
        for i, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise DataError("each row must be an object", path=str(path), line=i)
            yield i, row
    else:
        yield from read_jsonl(path)


def _level_description(level: str) -> str:
    return REVIEW_DESCRIPTIONS.get(level, f"The user is {level}.")


def load_pairwise_levels(path: str | Path, domain: str = "elix") -> list[PreferencePair]:
    """Reviews/ELIX rows as preference pairs of user ``scorer_level``."""
    out = []
    for line, row in _rows(path):
        prompt = require(row, "prompt", str, path, line)
        x = require(row, "response_x", str, path, line)
        y = require(row, "response_y", str, path, line)
        level_x = str(require(row, "level_x", (str, int), path, line))
        level_y = str(require(row, "level_y", (str, int), path, line))
        scorer = str(require(row, "scorer_level", (str, int), path, line))
        label = row.get("label")
        if hasattr(label, "item"):  # numpy scalar from parquet
            label = label.item()
        if isinstance(label, bool) or label not in (0, 1):
            raise DataError(f"label must be 0 (response_x preferred) or 1, got {label!r}",
                            path=str(path), line=line, field="label")
        chosen, rejected = (x, y) if label == 0 else (y, x)
        rejected_level = level_y if label == 0 else level_x
        out.append(PreferencePair(
            user_id=scorer, prompt=prompt.strip(), chosen=chosen.strip(),
            rejected=rejected.strip(), user_description=_level_description(scorer),
            rejected_description=_level_description(rejected_level),
            meta={"source": str(path), "line": line, "domain": domain, "level_x": level_x,
                  "level_y": level_y, "label": label}))
    return out


def load_reviews(path: str | Path) -> list[PreferencePair]:
    return load_pairwise_levels(path, domain="reviews")


def load_elix(path: str | Path) -> list[PreferencePair]:
    return load_pairwise_levels(path, domain="elix")


def load_roleplay(path: str | Path) -> list[PreferencePair]:
    """Roleplay rows (x, yw, yl, level, score_persona.persona_description)."""
    out = []
    for line, row in _rows(path):
        x = require(row, "x", str, path, line)
        yw = require(row, "yw", str, path, line)
        yl = require(row, "yl", str, path, line)
        level = str(require(row, "level", (str, int), path, line))
        persona = row.get("score_persona")
        if isinstance(persona, str):
            try:
                persona = json.loads(persona)
            except json.JSONDecodeError:
                raise DataError("not a JSON object", path=str(path), line=line,
                                field="score_persona") from None
        if isinstance(persona, dict):
            description = require(persona, "persona_description", str, path, line,
                                  "score_persona")
        elif "score_persona.persona_description" in row:
            description = require(row, "score_persona.persona_description", str, path, line)
        else:
            raise DataError("missing", path=str(path), line=line,
                            field="score_persona.persona_description")
        out.append(PreferencePair(user_id=level, prompt=x.strip(), chosen=yw.strip(),
                                  rejected=yl.strip(), user_description=description.strip(),
                                  meta={"source": str(path), "line": line,
                                        "domain": "roleplay"}))
    return out


LOADERS = {"elix": load_elix, "reviews": load_reviews, "roleplay": load_roleplay}
