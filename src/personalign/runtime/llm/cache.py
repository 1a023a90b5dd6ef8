"""Persistent cache of LLM calls, safe across processes (diskcache is SQLite-backed)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import diskcache

from personalign.runtime import settings


def _canonical(obj: Any) -> Any:
    if is_dataclass(obj):
        return _canonical(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


def cache_key(*parts: Any) -> str:
    """A stable hash of a request: model identity, operation, full request, sampling params."""
    blob = json.dumps(_canonical(parts), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CallCache:
    """Key -> JSON-able result. ``None`` path means the default under the personalign home."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else settings.home() / "cache" / "llm"
        self._store = diskcache.Cache(str(self.path), size_limit=8 * 2**30)

    def get(self, key: str) -> Any | None:
        return self._store.get(key)

    def set(self, key: str, value: Any) -> None:
        self._store.set(key, value)

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    def close(self) -> None:
        self._store.close()
