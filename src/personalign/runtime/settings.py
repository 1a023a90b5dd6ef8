"""Where personalign keeps prepared models, the LLM-call cache and run folders."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$PERSONALIGN_HOME`` or ``~/.cache/personalign``."""
    root = os.environ.get("PERSONALIGN_HOME") or Path.home() / ".cache" / "personalign"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_enabled() -> bool:
    """The LLM-call cache is on unless ``PERSONALIGN_NO_CACHE=1``."""
    return os.environ.get("PERSONALIGN_NO_CACHE", "") not in ("1", "true", "yes")
