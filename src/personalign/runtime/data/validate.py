"""Reading input files with errors that name the file, the line and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from personalign.runtime.errors import DataError


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=str(path))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte {e.start})", path=str(path), line=line) from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for each non-blank line."""
    text = read_text(path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", path=str(path),
                            line=number) from None
        if not isinstance(obj, dict):
            raise DataError("each line must be a JSON object", path=str(path), line=number)
        yield number, obj


def require(obj: dict, key: str, kind: type | tuple[type, ...], path: str | Path,
            line: int | None = None, parent: str | None = None) -> Any:
    """``obj[key]`` checked for presence and type; bool never passes for int."""
    field = f"{parent}.{key}" if parent else key
    if key not in obj or obj[key] is None:
        raise DataError("missing", path=str(path), line=line, field=field)
    value = obj[key]
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"expected {names}, got {type(value).__name__}", path=str(path),
                        line=line, field=field)
    if isinstance(value, str) and not value.strip():
        raise DataError("empty", path=str(path), line=line, field=field)
    return value
