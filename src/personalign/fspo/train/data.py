"""Reading FSPO episode records (prompt, chosen, rejected, user_id, n_shots) from JSONL/parquet."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from personalign.runtime.data.validate import read_jsonl
from personalign.runtime.errors import DataError

REQUIRED = ("prompt", "chosen", "rejected", "user_id")


def _check(row: dict[str, Any], path: Path, line: int | None) -> dict[str, Any]:
    for key in REQUIRED:
        if key not in row or row[key] is None:
            raise DataError("missing field", path=str(path), line=line, field=key)
        if not isinstance(row[key], str):
            raise DataError(f"expected a string, got {type(row[key]).__name__}",
                            path=str(path), line=line, field=key)
    if not row["chosen"].strip() or not row["rejected"].strip():
        raise DataError("empty completion", path=str(path), line=line,
                        field="chosen" if not row["chosen"].strip() else "rejected")
    meta = row.get("meta")
    if isinstance(meta, str):  # parquet files store meta as a JSON string
        try:
            row["meta"] = json.loads(meta) if meta else {}
        except json.JSONDecodeError:
            raise DataError("meta is not valid JSON", path=str(path), line=line,
                            field="meta") from None
    return row


def load_episodes(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """All records of the given files, validated (DataError names file, line and field)."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise DataError("file does not exist", path=str(path))
        if path.suffix == ".parquet":
            import pandas as pd

            for i, row in enumerate(pd.read_parquet(path).to_dict("records")):
                rows.append(_check(row, path, i + 1))
        else:
            for line, row in read_jsonl(path):
                if not isinstance(row, dict):
                    raise DataError("expected a JSON object", path=str(path), line=line)
                rows.append(_check(row, path, line))
    return rows
