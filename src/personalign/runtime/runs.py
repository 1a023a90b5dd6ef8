"""One rule for every long run's folder (benchmarks, FSPO data, training, evaluation).

    run = RunFolder.open(out, kind="bench opinionqa-individual",
                         inputs={"config": cfg, "models": {...}})
    record = run.load(unit, inputs=user_rows)      # None: not done yet
    if record is None:
        record = compute(...)
        run.save(unit, record, inputs=user_rows)   # atomic: there whole or not at all

``run.json`` holds a fingerprint of the run-wide inputs (config, model identities); each unit
holds the digest of its own inputs (a user's data rows, a method's model). Reopening the folder
with other run-wide inputs, or meeting a unit computed from other inputs, stops with a message
naming what changed; with ``force=True`` what changed is recomputed. A rerun never silently
reuses results computed from other inputs. Budgets and thread counts are not inputs: a run
resumed with a larger budget continues.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from personalign.runtime.errors import ConfigError
from personalign.runtime.storage import atomic_write_json, safe_filename

RUN_FILE = "run.json"
UNITS = "units"


def digest(obj: Any) -> str:
    """A short stable digest of any JSON-able object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """Digest of a file's bytes, or of every file under a folder (names and bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def model_identity(spec: str) -> str:
    """A model spec as an input: a local folder or file adds the digest of its contents (a
    retrained adapter under the same path is another model); names stay as they are."""
    path = Path(spec)
    return f"{spec}@{file_digest(path)}" if path.exists() else spec


class RunFolder:
    """A long run's output folder: its input fingerprint and atomic per-unit results."""

    def __init__(self, path: Path, kind: str, inputs: dict[str, Any], force: bool = False):
        self.path = path
        self.kind = kind
        self.inputs = inputs
        self.force = force  # units computed from other inputs are recomputed, not refused

    @classmethod
    def open(cls, path: str | Path, *, kind: str, inputs: dict[str, Any],
             force: bool = False) -> "RunFolder":
        """Create the folder, or reopen it when its run-wide inputs match (``force``: other
        inputs drop the old units and start over)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} is a file, not a run folder")
        fingerprint = {k: digest(v) for k, v in inputs.items()}
        run_file = path / RUN_FILE
        if run_file.exists():
            try:
                old = json.loads(run_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                old = {}
            old_fp = old.get("fingerprint", {})
            changed = sorted(k for k in set(old_fp) | set(fingerprint)
                             if old_fp.get(k) != fingerprint.get(k))
            if old.get("kind") != kind:
                changed.insert(0, "kind")
            if changed and not force:
                raise ConfigError(
                    f"{path} holds a run with other inputs (changed: {', '.join(changed)}); "
                    "rerun with --force to recompute it, or use another output folder")
            if not changed:
                return cls(path, kind, inputs, force)
            shutil.rmtree(path / UNITS, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_file, {
            "kind": kind, "fingerprint": fingerprint,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return cls(path, kind, inputs, force)

    # ---- units --------------------------------------------------------------------------
    def unit_path(self, unit: str) -> Path:
        return self.path / UNITS / f"{safe_filename(unit)}.json"

    def save(self, unit: str, record: dict[str, Any], inputs: Any = None) -> Path:
        """Store a finished unit with the digest of the inputs it was computed from."""
        return atomic_write_json(self.unit_path(unit), {
            "unit": unit, "inputs": digest(inputs), "record": record})

    def load(self, unit: str, inputs: Any = None) -> dict[str, Any] | None:
        """A finished unit's record; None when there is none (or, with ``force``, when it was
        computed from other inputs). Other inputs without ``force`` stop the run."""
        path = self.unit_path(unit)
        if not path.exists():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("inputs") != digest(inputs):
            if self.force:
                return None
            raise ConfigError(
                f"{self.path}: {unit} was computed from other inputs (its data or model "
                "changed); rerun with --force to recompute it, or use another output folder")
        return saved["record"]
