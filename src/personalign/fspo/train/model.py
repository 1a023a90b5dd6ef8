"""FSPO model folders: what the trainer writes and how any part of the project loads it.

A folder holds ``fspo_model.json`` (the manifest) and either LoRA adapters over a named base
model (``sft_adapter`` then ``adapter``, merged in that order) or full weights (``model``).
Inference runs on the runtime's engine (:func:`personalign.fspo.personalizer.fspo_llm`); this
module only reads and writes folders, and loads a base model for training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from personalign.runtime import models as embedded
from personalign.runtime.errors import ModelError
from personalign.runtime.storage import atomic_write_json

MANIFEST = "fspo_model.json"


def load_base(model: str, *, dtype=torch.float32):
    """(model, tokenizer) of an embedded model name or HF folder, for training."""
    from transformers import AutoModelForCausalLM

    path = embedded.resolve(model)
    try:
        with embedded.quiet_loading():
            tokenizer = embedded.load_tokenizer(path)
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise ModelError(f"cannot load model from {path}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer


def write_manifest(folder: Path, **fields: Any) -> None:
    atomic_write_json(Path(folder) / MANIFEST, fields, indent=2)


def read_manifest(spec: str) -> dict[str, Any]:
    """The manifest of a model folder written by the FSPO trainer, or of a training run
    folder (its ``final/``), with ``folder`` added; ``{}`` for ``base`` and for a plain model
    (an embedded model's name or a model folder without a manifest)."""
    if spec == "base" or _plain_model(spec):
        return {}
    folder = Path(spec)
    if not (folder / MANIFEST).exists() and (folder / "final" / MANIFEST).exists():
        folder = folder / "final"
    if not (folder / MANIFEST).exists():
        raise ModelError(f"{spec}: no {MANIFEST} here or in final/ (not an FSPO model or run); "
                         "use base for the untrained model")
    return {**json.loads((folder / MANIFEST).read_text(encoding="utf-8")), "folder": str(folder)}


def model_files(spec: str) -> tuple[str, list[str]]:
    """(base model, adapter folders in merge order) of ``base``, a plain model, a model folder
    written by the FSPO trainer, or a training run folder (its ``final/``)."""
    if spec == "base":
        return embedded.FAST_GENERATOR, []
    if _plain_model(spec):
        return spec, []
    m = read_manifest(spec)
    folder = Path(m["folder"])
    if m.get("finetune") == "full":
        return str(folder / m["model"]), []
    return m["base"], [str(folder / m[k]) for k in ("sft_adapter", "adapter") if m.get(k)]


def _plain_model(spec: str) -> bool:
    """An embedded model's name or a model folder (its config and weights, no FSPO manifest):
    a base model. A training run folder also holds a config.json (the run's), not weights."""
    folder = Path(spec)
    if spec in embedded.EMBEDDED:
        return True
    weights = any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").exists()
    return (folder / "config.json").exists() and weights and not (folder / MANIFEST).exists()


def base_model(spec: str) -> str:
    """The model ``spec`` was trained from, without any adapter: what its win rate is measured
    against. A full fine-tune names it in its manifest (``base``; older folders:
    ``reference_model``)."""
    base, adapters = model_files(spec)
    if adapters or spec == "base" or _plain_model(spec):
        return base
    folder = Path(base).parent
    m = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    if not (m.get("base") or m.get("reference_model")):
        raise ModelError(f"{spec}: its {MANIFEST} names no base model (a full fine-tune "
                         "written before the manifest recorded it); retrain or add \"base\"")
    return m.get("base") or m["reference_model"]
