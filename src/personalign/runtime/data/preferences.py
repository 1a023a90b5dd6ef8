"""Preference pairs (prompt/chosen/rejected, TRL column names) from and to JSONL, parquet and
Hugging Face ``datasets``.

Readable inputs: a ``.jsonl``/``.json`` file (one object per line), a ``.parquet`` file, a
``datasets.Dataset`` / ``DatasetDict`` object, or a folder written by ``save_to_disk``. Optional
columns: ``user_id``, ``user_description``, ``rejected_description``, ``id``; any other column
goes to ``PreferencePair.meta``. Written files load with ``datasets.load_dataset("json"|"parquet",
data_files=...)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from personalign.runtime.data.records import PreferencePair
from personalign.runtime.data.validate import optional, read_jsonl, require, require_records
from personalign.runtime.errors import DataError
from personalign.runtime.storage import atomic_write

REQUIRED = ("prompt", "chosen", "rejected")
OPTIONAL = ("user_id", "user_description", "rejected_description")


def _text(value: Any) -> Any:
    # Conversational datasets store chosen/rejected as message lists: keep the last reply.
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value[-1].get("content")
    return value


def _pair(row: dict, path: str, line: int | None, seen: dict, default_user: str) -> PreferencePair:
    values = {}
    for key in REQUIRED:
        row[key] = _text(row.get(key))
        values[key] = require(row, key, str, path, line)
    if values["chosen"].strip() == values["rejected"].strip():
        raise DataError("chosen and rejected are the same text", path=path, line=line,
                        field="rejected")
    user_id = optional(row, "user_id", (str, int), path, line)
    user_id = default_user if user_id is None else str(user_id)
    for key in ("user_description", "rejected_description"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise DataError(f"expected str, got {type(row[key]).__name__}", path=path,
                            line=line, field=key)
    # Duplicate ids: an explicit "id" column, else the same pair twice for the same user.
    key = ("id", str(row["id"])) if row.get("id") is not None else \
        ("pair", user_id, values["prompt"], values["chosen"], values["rejected"])
    if key in seen:
        what = f"id {row['id']!r}" if key[0] == "id" else "pair"
        raise DataError(f"duplicate {what} (first at {seen[key]})", path=path, line=line,
                        field="id" if key[0] == "id" else "prompt")
    seen[key] = f"line {line}" if line is not None else "an earlier row"
    meta = {k: v for k, v in row.items() if k not in REQUIRED + OPTIONAL + ("meta",)}
    meta.update(_meta(row.get("meta"), path, line))
    return PreferencePair(user_id=user_id, prompt=values["prompt"], chosen=values["chosen"],
                          rejected=values["rejected"], user_description=row.get("user_description"),
                          rejected_description=row.get("rejected_description"), meta=meta)


def _meta(value: Any, path: str, line: int | None) -> dict:
    # Written files carry meta as one JSON string column (same columns in every row).
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict):
            return decoded
    raise DataError("expected an object or a JSON object string", path=path, line=line,
                    field="meta")


def _rows_of_dataset(ds) -> Iterator[dict]:
    from datasets import DatasetDict

    if isinstance(ds, DatasetDict):
        if "train" not in ds and len(ds) != 1:
            raise DataError(f"dataset has splits {list(ds)}: pass one split (e.g. ds['train'])")
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise DataError(f"dataset lacks column(s) {', '.join(missing)}", field=missing[0])
    yield from ds


def load_preferences(source: Any, *, default_user: str = "default") -> list[PreferencePair]:
    """Pairs from a JSONL/parquet file, a ``save_to_disk`` folder or a ``datasets`` object.

    Rows are numbered from 1 (the line of a JSONL file, the row of a table) in error messages.
    """
    if not isinstance(source, (str, os.PathLike)):
        name = getattr(source, "info", None) and source.info.dataset_name or "<dataset>"
        rows = enumerate(_rows_of_dataset(source), start=1)
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise DataError("file not found", path=name)
        if path.is_dir():
            rows = enumerate(_rows_of_dataset(_load_from_disk(path)), start=1)
        elif path.suffix == ".parquet":
            rows = enumerate(_read_parquet(path), start=1)
        else:
            rows = read_jsonl(path)
    seen: dict = {}
    try:
        pairs = [_pair(dict(row), name, number, seen, default_user) for number, row in rows]
    except DataError as e:
        raise _with_path(e, name) from None
    require_records(len(pairs), name, "preference pairs")
    return pairs


def _load_from_disk(path: Path):
    try:
        from datasets import load_from_disk

        return load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError/ValueError/...
        raise DataError(f"not a saved datasets folder: {e}", path=str(path)) from None


def _with_path(e: DataError, path: str) -> DataError:
    if e.path:
        return e
    return DataError(e.reason, path=path, line=e.line, field=e.field)


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable parquet file: {e}", path=str(path)) from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DataError(f"parquet file lacks column(s) {', '.join(missing)}", path=str(path),
                        field=missing[0])
    return table.to_pylist()


def _records(pairs: Iterable[PreferencePair]) -> list[dict]:
    rows = []
    for p in pairs:
        row = {"user_id": p.user_id, "prompt": p.prompt, "chosen": p.chosen,
               "rejected": p.rejected, "user_description": p.user_description,
               "rejected_description": p.rejected_description}
        # Meta travels as one JSON string so every row has the same columns for Arrow.
        row["meta"] = json.dumps(p.meta, ensure_ascii=False, sort_keys=True) if p.meta else None
        rows.append(row)
    return rows


def save_preferences(pairs: Iterable[PreferencePair], path: str | Path) -> Path:
    """Write ``.jsonl`` or ``.parquet`` (by suffix), atomically (tmp file + rename)."""
    rows = _records(pairs)

    def write(tmp: Path) -> None:
        if Path(path).suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([(k, pa.string()) for k in ("user_id", "prompt", "chosen",
                                "rejected", "user_description", "rejected_description",
                                "meta")])
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")

    return atomic_write(path, write)


def to_dataset(pairs: Iterable[PreferencePair]):
    """A ``datasets.Dataset`` with TRL's prompt/chosen/rejected columns (+ user columns)."""
    from datasets import Dataset

    return Dataset.from_list(_records(pairs))
