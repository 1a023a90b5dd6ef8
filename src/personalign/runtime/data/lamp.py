"""Loader for LaMP (Salemi et al.) JSON: a questions file and an outputs file.

questions: ``[{"id", "input", "profile": [{...}, ...]}, ...]``;
outputs:   ``{"task": "LaMP_2", "golds": [{"id", "output"}, ...]}``.

Supported tasks: LaMP-2 (movie tagging, a choice among the tags listed in the input), LaMP-3
(product rating 1-5, ordinal) and LaMP-5 (scholarly title generation, free text). Choice tasks
convert to :class:`User`/:class:`Opinion`: the profile items become the user's past opinions and
the query becomes the held-out target opinion.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personalign.runtime.data.records import Opinion, User
from personalign.runtime.data.validate import (parse_json, read_text, require_object,
                                               require_options, require_records,
                                               type_names)
from personalign.runtime.errors import DataError

TASKS = ("LaMP-2", "LaMP-3", "LaMP-5")
RATINGS = ("1", "2", "3", "4", "5")
# LaMP-2 (movie tagging) lists these 15 tags inside every input.
LAMP2_TAGS = ("sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia",
              "dark comedy", "classic", "psychology", "fantasy", "romance", "thought-provoking",
              "social commentary", "violence", "true story")
_TAGS = re.compile(r"tags:\s*\[(.*?)\]", re.S | re.I)
_AFTER_PREFIX = re.compile(r"^.*?(?:description|review|abstract(?: of a paper)?)\s*:\s*", re.S | re.I)
# The profile fields each task needs (the profile item's text, its label).
PROFILE_FIELDS = {"LaMP-2": ("description", "tag"), "LaMP-3": ("text", "score"),
                  "LaMP-5": ("abstract", "title")}
QUESTION_TEMPLATES = {
    "LaMP-2": "Which tag does this movie relate to? {text}",
    "LaMP-3": "What score (1 to 5) does this review give? {text}",
}


@dataclass(frozen=True)
class LampExample:
    """One LaMP query: its user's profile (past items), the input and the gold output."""

    task: str
    user_id: str
    input: str
    profile: tuple[dict[str, Any], ...]
    gold: str
    options: tuple[str, ...] = ()  # empty for generation tasks (LaMP-5)

    @property
    def is_choice(self) -> bool:
        return bool(self.options)

    @property
    def gold_index(self) -> int:
        return self.options.index(self.gold)

    def query_text(self) -> str:
        """The input without its task instruction (the movie description, review, abstract)."""
        return _AFTER_PREFIX.sub("", self.input, count=1).strip()

    def _opinion(self, text: str, label: str, qid: str) -> Opinion:
        return Opinion(question=QUESTION_TEMPLATES[self.task].format(text=text.strip()),
                       options=self.options, answer=self.options.index(label), qid=qid,
                       topic=self.task,
                       ordinal=tuple(float(o) for o in self.options)
                       if self.task == "LaMP-3" else None)

    def target_opinion(self) -> Opinion:
        """The query as an Opinion whose answer is the gold label (choice tasks only)."""
        self._require_choice()
        return self._opinion(self.query_text(), self.gold, f"{self.user_id}:query")

    def to_user(self) -> User:
        """The user with their profile items as past opinions (the query is not included)."""
        self._require_choice()
        text_key, label_key = PROFILE_FIELDS[self.task]
        opinions = tuple(self._opinion(str(p[text_key]), str(p[label_key]),
                                       f"{self.user_id}:{p.get('id', i)}")
                         for i, p in enumerate(self.profile))
        return User(user_id=self.user_id, opinions=opinions)

    def _require_choice(self) -> None:
        if not self.is_choice:
            raise ValueError(f"{self.task} is a generation task: it has no options")


def normalize_task(name: str) -> str:
    m = re.fullmatch(r"\s*lamp[-_ ]?(\d+)\s*", name, flags=re.I)
    task = f"LaMP-{m.group(1)}" if m else name
    if task not in TASKS:
        raise ValueError(f"unsupported LaMP task {name!r} (supported: {', '.join(TASKS)})")
    return task


def _read_json(path: Path) -> tuple[Any, str]:
    """The parsed document and its text (for locating records in error messages)."""
    text = read_text(path)
    return parse_json(text, path), text


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _array_item_offsets(text: str, start: int) -> list[int]:
    """Where each item of the (already parsed, so valid) JSON array at ``start`` begins."""
    decoder, offsets = json.JSONDecoder(), []
    i = _WHITESPACE.match(text, start + 1).end()
    while text[i] != "]":
        offsets.append(i)
        _, i = decoder.raw_decode(text, i)
        i = _WHITESPACE.match(text, i).end()
        if text[i] == ",":
            i = _WHITESPACE.match(text, i + 1).end()
    return offsets


def _member_offsets(text: str, start: int) -> dict[str, int]:
    """Where each member's value begins in the (valid) JSON object at ``start``."""
    decoder, offsets = json.JSONDecoder(), {}
    i = _WHITESPACE.match(text, start + 1).end()
    while text[i] != "}":
        key, i = decoder.raw_decode(text, i)
        i = _WHITESPACE.match(text, _WHITESPACE.match(text, i).end() + 1).end()  # past ':'
        offsets[key] = i
        _, i = decoder.raw_decode(text, i)
        i = _WHITESPACE.match(text, i).end()
        if text[i] == ",":
            i = _WHITESPACE.match(text, i + 1).end()
    return offsets


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _line_numbers(text: str, offsets: list[int]) -> list[int]:
    """The line of each of the ascending ``offsets``, in one pass (files can be large)."""
    lines, line, previous = [], 1, 0
    for offset in offsets:
        line += text.count("\n", previous, offset)
        lines.append(line)
        previous = offset
    return lines


def _need(obj: Any, key: str, where: str, path: Path, line: int | None,
          kind: type | tuple[type, ...] = str) -> Any:
    # Like validate.require, but an empty text is kept (a LaMP profile item may have none).
    require_object(obj, path, line, where)
    field = f"{where}.{key}".lstrip(".")
    if key not in obj or obj[key] is None:
        raise DataError("missing", path=str(path), line=line, field=field)
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise DataError(f"expected {type_names(kind)}, got {type(value).__name__}",
                        path=str(path), line=line, field=field)
    return value


def parse_tags(text: str) -> tuple[str, ...]:
    """The tag list written inside a LaMP-2 input ("... tags: [a, b, c] description: ...")."""
    m = _TAGS.search(text)
    if not m:
        return ()
    return tuple(t.strip().strip("'\"") for t in m.group(1).split(",") if t.strip())


def _options(task: str, text: str) -> tuple[str, ...]:
    if task == "LaMP-2":
        return parse_tags(text)
    if task == "LaMP-3":
        return RATINGS
    return ()


def _label(task: str, value: Any) -> str:
    # LaMP-3 golds and profile scores come as "4" or 4 (or "4.0").
    text = str(value).strip()
    if task == "LaMP-3" and re.fullmatch(r"\d+(\.0+)?", text):
        return str(int(float(text)))
    return text


def _read_golds(opath: Path, task: str | None) -> tuple[str, dict[str, tuple[str, int]]]:
    """The task name and ``{id: (gold label, line)}`` of an outputs file."""
    out_doc, text = _read_json(opath)
    if not isinstance(out_doc, dict):
        raise DataError("expected an object with 'task' and 'golds'", path=str(opath), line=1)
    members = _member_offsets(text, _WHITESPACE.match(text).end())
    task_line = _line_of(text, members["task"]) if "task" in members else 1
    task_name = task or _need(out_doc, "task", "", opath, task_line)
    try:
        task_name = normalize_task(task_name)
    except ValueError as e:
        raise DataError(str(e), path=str(opath), line=task_line, field="task") from None
    golds_line = _line_of(text, members["golds"]) if "golds" in members else 1
    golds_raw = _need(out_doc, "golds", "", opath, golds_line, list)
    golds: dict[str, tuple[str, int]] = {}
    item_lines = _line_numbers(text, _array_item_offsets(text, members["golds"]))
    for i, (g, line) in enumerate(zip(golds_raw, item_lines)):
        gid = str(_need(g, "id", f"golds[{i}]", opath, line, (str, int)))
        out = _need(g, "output", f"golds[{i}]", opath, line, (str, int, float))
        if gid in golds:
            raise DataError(f"duplicate id {gid!r}", path=str(opath), line=line,
                            field=f"golds[{i}].id")
        label = _label(task_name, out)
        if not label.strip():
            raise DataError("empty gold output", path=str(opath), line=line,
                            field=f"golds[{i}].output")
        golds[gid] = (label, line)
    return task_name, golds


def load_lamp(questions: str | Path, outputs: str | Path | None = None, *,
              task: str | None = None) -> list[LampExample]:
    """Examples of one LaMP split; ``outputs`` defaults to the sibling ``*outputs*.json``."""
    qpath = Path(questions)
    opath = Path(outputs) if outputs else _sibling_outputs(qpath)
    task_name, golds = _read_golds(opath, task)
    doc, text = _read_json(qpath)
    if not isinstance(doc, list):
        raise DataError("expected a JSON list of questions", path=str(qpath), line=1)
    require_records(len(doc), qpath, "questions")
    text_key, label_key = PROFILE_FIELDS[task_name]
    examples: list[LampExample] = []
    seen: set[str] = set()
    item_lines = _line_numbers(text, _array_item_offsets(text, _WHITESPACE.match(text).end()))
    for i, (q, line) in enumerate(zip(doc, item_lines)):
        where = f"[{i}]"
        qid = str(_need(q, "id", where, qpath, line, (str, int)))
        if qid in seen:
            raise DataError(f"duplicate id {qid!r}", path=str(qpath), line=line,
                            field=f"{where}.id")
        seen.add(qid)
        text_in = _need(q, "input", where, qpath, line)
        profile = _need(q, "profile", where, qpath, line, list)
        options = _options(task_name, text_in)
        if task_name == "LaMP-2":
            require_options(options, qpath, line, f"{where}.input")
        if qid not in golds:
            raise DataError(f"no gold output for id {qid!r} in {opath.name}", path=str(qpath),
                            line=line, field=f"{where}.id")
        gold, gold_line = golds[qid]
        if options and gold not in options:
            raise DataError(f"gold {gold!r} is not one of the {len(options)} options "
                            "(answer out of range)", path=str(opath), line=gold_line,
                            field="output")
        items = []
        for j, p in enumerate(profile):
            pwhere = f"{where}.profile[{j}]"
            _need(p, text_key, pwhere, qpath, line, (str,))
            label = _label(task_name, _need(p, label_key, pwhere, qpath, line, (str, int, float)))
            if options and label not in options:
                raise DataError(f"{label_key} {label!r} is not one of the options "
                                "(answer out of range)", path=str(qpath), line=line,
                                field=f"{pwhere}.{label_key}")
            items.append({**p, label_key: label})
        examples.append(LampExample(task=task_name, user_id=qid, input=text_in,
                                    profile=tuple(items), gold=gold, options=options))
    extra = sorted(set(golds) - seen, key=lambda gid: golds[gid][1])
    if extra:
        raise DataError(f"{len(extra)} gold id(s) have no question in {qpath.name}, e.g. "
                        f"{extra[0]!r}", path=str(opath), line=golds[extra[0]][1], field="golds")
    return examples


def _sibling_outputs(qpath: Path) -> Path:
    if "questions" in qpath.name:
        candidate = qpath.with_name(qpath.name.replace("questions", "outputs"))
        if candidate.exists():
            return candidate
    raise DataError("no outputs file given and no sibling '*outputs*' file found",
                    path=str(qpath))


def lamp_users(examples: list[LampExample]) -> list[tuple[User, Opinion]]:
    """(user with profile opinions, target opinion) for each example of a choice task."""
    return [(e.to_user(), e.target_opinion()) for e in examples]
