"""Reading input files with errors that name the file, the line and the field."""

from __future__ import annotations

import codecs
import json
import math
from pathlib import Path
from typing import Any, Iterator

from personalign.runtime.errors import DataError


def read_text(path: str | Path) -> str:
    """The file's text; a UTF-8 byte-order mark (written by some Windows editors) is dropped."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=str(path))
    if path.is_dir():
        raise DataError("is a folder, not a data file", path=str(path))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", path=str(path)) from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte {e.start})", path=str(path), line=line) from None


def parse_json(text: str, path: str | Path, line: int = 1) -> Any:
    """``json.loads`` with every failure (syntax, nesting, huge numbers) as a DataError;
    ``line`` is where ``text`` starts in the file."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", path=str(path),
                        line=line + e.lineno - 1) from None
    except RecursionError:
        raise DataError("malformed JSON: nested too deeply", path=str(path), line=line) from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise DataError(f"malformed JSON: {e}", path=str(path), line=line) from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for each non-blank line."""
    # JSON strings may hold U+2028 and other characters that str.splitlines breaks on.
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        obj = parse_json(line, path, number)
        if not isinstance(obj, dict):
            raise DataError("each line must be a JSON object", path=str(path), line=number)
        yield number, obj


def require_records(count: int, path: str | Path, what: str) -> None:
    """A data file without a single record is a mistake (an empty or truncated file)."""
    if count == 0:
        raise DataError(f"no {what} found (an empty file?)", path=str(path), line=1)


def require_object(value: Any, path: str | Path, line: int | None, field: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"expected an object, got {type(value).__name__}", path=str(path),
                        line=line, field=field)
    return value


def type_names(kind: type | tuple[type, ...]) -> str:
    return kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)


def require(obj: dict, key: str, kind: type | tuple[type, ...], path: str | Path,
            line: int | None = None, parent: str | None = None) -> Any:
    """``obj[key]`` checked for presence and type; bool never passes for int."""
    field = f"{parent}.{key}" if parent else key
    if key not in obj or obj[key] is None:
        raise DataError("missing", path=str(path), line=line, field=field)
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise DataError(f"expected {type_names(kind)}, got {type(value).__name__}",
                        path=str(path), line=line, field=field)
    if isinstance(value, str) and not value.strip():
        raise DataError("empty", path=str(path), line=line, field=field)
    return value


def optional(obj: dict, key: str, kind: type | tuple[type, ...], path: str | Path,
             line: int | None = None, parent: str | None = None) -> Any:
    """``obj[key]`` checked like :func:`require` when present; None when absent or null."""
    return None if obj.get(key) is None else require(obj, key, kind, path, line, parent)


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite int or float (never bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def require_options(values: Any, path: str | Path, line: int | None,
                    field: str) -> tuple[str, ...]:
    """A question's options: a list of at least two distinct, non-empty strings."""
    if not isinstance(values, (list, tuple)):
        raise DataError(f"expected a list, got {type(values).__name__}", path=str(path),
                        line=line, field=field)
    if not values:
        raise DataError("options is empty", path=str(path), line=line, field=field)
    if len(values) == 1:
        raise DataError("only one option: a question needs at least two", path=str(path),
                        line=line, field=field)
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"expected str, got {type(value).__name__}", path=str(path),
                            line=line, field=f"{field}[{i}]")
        # Options that differ only in surrounding spaces read the same in a prompt.
        text = value.strip()
        if not text:
            raise DataError("empty", path=str(path), line=line, field=f"{field}[{i}]")
        if text in first:
            raise DataError(f"duplicate option {text!r} (same as {field}[{first[text]}])",
                            path=str(path), line=line, field=f"{field}[{i}]")
        first[text] = i
    return tuple(values)
