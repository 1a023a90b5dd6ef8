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


def configure_threads(threads: int | None = None) -> None:
    """Use ``threads`` (or $PERSONALIGN_THREADS) torch intra-op threads; torch's default
    otherwise. Processes sharing a small machine run best at one thread each."""
    threads = threads or int(os.environ.get("PERSONALIGN_THREADS", "0") or 0)
    if threads:
        import torch

        torch.set_num_threads(threads)


def cache_enabled() -> bool:
    """The LLM-call cache is on unless ``PERSONALIGN_NO_CACHE=1``."""
    return os.environ.get("PERSONALIGN_NO_CACHE", "") not in ("1", "true", "yes")
