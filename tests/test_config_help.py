"""Configs that document themselves (issue 25): every field's help lives in the dataclass
(``metadata={"help": ...}``), the CLI's options and their help come from those fields, the
default models are one definition, and ``SharedModels`` is a checked config."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer
from typer.testing import CliRunner

from personalign.bench.runner import BenchConfig
from personalign.cli.main import app
from personalign.fermi.config import FermiConfig
from personalign.fspo.train.config import FSPOTrainConfig, LoraSettings
from personalign.methods import MethodSettings, parse_specs
from personalign.runtime import models as embedded
from personalign.runtime.budget import Limits
from personalign.runtime.config import field_help, public_fields
from personalign.runtime.data.opinionqa import dump_users
from personalign.runtime.errors import ConfigError
from personalign.runtime.executor import ExecutorConfig
from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import make_user
from tests.test_inputs import assert_one_line_error, run_cli

DOCUMENTED = (FermiConfig, MethodSettings, Limits, FSPOTrainConfig, LoraSettings, SharedModels)
#: bench options that are config fields: (config, field) -> flag
BENCH_FIELDS = {
    **{(MethodSettings, n): "--" + n.replace("_", "-") for n in
       ("seed", "preset", "fewshot_k", "retriever", "fspo_shots", "transfer_correctness")},
    (FermiConfig, "iterations"): "--iterations", (FermiConfig, "num_candidates"): "--candidates",
    (FermiConfig, "memory_size"): "--memory", (FermiConfig, "final_pool"): "--final-pool",
    (FermiConfig, "reference_entry"): "--reference-entry",
    (SharedModels, "task"): "--task-model", (SharedModels, "optimizer"): "--optimizer-model",
    (SharedModels, "scoring"): "--scoring",
    **{(Limits, f.name): "--max-" + f.name.replace("_", "-") for f in dataclasses.fields(Limits)},
}


def _flat(text: str) -> str:
    """Help output with the box drawing and the wrapping taken out."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return _flat(result.output)


def _field(cls, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


@pytest.mark.parametrize("cls", DOCUMENTED, ids=lambda c: c.__name__)
def test_every_field_is_documented(cls):
    missing = [f.name for f in public_fields(cls) if not field_help(f)]
    assert not missing, f"{cls.__name__} fields without metadata help: {missing}"


@pytest.mark.parametrize("command", ["opinionqa", "globalopinionqa"])
def test_bench_help_shows_each_config_fields_help(command):
    output = _help("bench", command)
    for (cls, name), flag in BENCH_FIELDS.items():
        text = _flat(field_help(_field(cls, name)))
        assert flag in output, flag
        assert text in output, f"{cls.__name__}.{name}: {text!r} not in --help"
    assert "One of: letter | text | generate" in output  # the choices of a Literal field
    assert "[default: quick]" in output and "[default: set by --preset]" in output
    assert f"[default: {SharedModels().task}]" in output
    assert "-T" in output and "-K" in output and "-L" in output
    assert "personalign[peers]" in output  # hand-written help is not eaten as rich markup


def test_fspo_train_help_shows_field_help_and_default():
    output = _help("fspo", "train")
    assert _flat(field_help(_field(FSPOTrainConfig, "grad_accum"))) in output
    assert "One of: ipo_sum | ipo | dpo. [default: ipo_sum]" in output
    assert "[config default" not in output and "FSPOTrainConfig.beta" not in output


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "users.jsonl"
    dump_users([make_user("u1", 40), make_user("u2", 40)], path)
    return path


class Captured(Exception):
    pass


def _bench_config(monkeypatch, data, tmp_path, *args: str) -> BenchConfig:
    """The BenchConfig ``bench opinionqa`` builds from ``args`` (the run itself is skipped)."""
    from personalign.bench import runner

    def capture(cfg, users, **kw):
        raise Captured(cfg)

    monkeypatch.setattr(runner, "run_benchmark", capture)
    result = CliRunner().invoke(app, ["bench", "opinionqa", "--data", str(data), "--out",
                                      str(tmp_path / "out"), *args])
    assert isinstance(result.exception, Captured), result.output
    return result.exception.args[0]


def test_bench_defaults_are_unchanged(monkeypatch, data, tmp_path):
    cfg = _bench_config(monkeypatch, data, tmp_path)
    expected = BenchConfig(
        data=str(data), out=str(tmp_path / "out"), users=20, methods=parse_specs("all"),
        settings=MethodSettings(seed=0, preset="quick", fermi={}, fewshot_k=3,
                                retriever="embeddings", fspo_shots=8,
                                transfer_correctness="eval"),
        # the engine scores where the CPU computes bfloat16 natively, else llama.cpp
        task_model=("qwen2.5-coder-1.5b-instruct" if embedded.native_bfloat16()
                    else "llamacpp:qwen2.5-coder-1.5b-instruct"),
        optimizer_model="llamacpp:qwen2.5-coder-1.5b-instruct", embedder="all-minilm-l6-v2",
        scoring="letter", execution=ExecutorConfig(kind="local", workers=1),
        limits=Limits(None, None, None, None, None, None))
    assert cfg.to_dict() == expected.to_dict()


def test_bench_flags_reach_their_config_fields(monkeypatch, data, tmp_path):
    cfg = _bench_config(
        monkeypatch, data, tmp_path, "-T", "3", "-K", "2", "-L", "4", "--final-pool", "memory",
        "--reference-entry", "worst", "--fermi", "include_best=true", "--seed", "5",
        "--preset", "tiny", "--fewshot-k", "2", "--retriever", "bm25", "--fspo-shots", "4",
        "--transfer-correctness", "fit", "--task-model", "fake:a", "--optimizer-model",
        "fake:b", "--scoring", "text", "--max-user-calls", "7", "--max-run-seconds", "1.5")
    assert cfg.settings == MethodSettings(
        seed=5, preset="tiny", fewshot_k=2, retriever="bm25", fspo_shots=4,
        transfer_correctness="fit",
        fermi={"iterations": 3, "num_candidates": 2, "memory_size": 4, "final_pool": "memory",
               "reference_entry": "worst", "include_best": True})
    assert (cfg.task_model, cfg.optimizer_model, cfg.scoring) == ("fake:a", "fake:b", "text")
    assert cfg.limits == Limits(user_calls=7, run_seconds=1.5)
    cfg = _bench_config(monkeypatch, data, tmp_path, "--task-model", "fake:a",
                        "--eval-model", "fake:e", "--methods", "vanilla")
    assert cfg.task_model == "fake:e" and cfg.methods == ["vanilla"]


def test_bench_scoring_typo_is_one_config_error_line(data, tmp_path):
    code, output = run_cli("bench", "opinionqa", "--data", data, "--out", tmp_path / "out",
                           "--methods", "vanilla", "--task-model", "fake:t",
                           "--scoring", "lettr")
    assert_one_line_error(code, output, "SharedModels.scoring", "'lettr'", "letter")
    assert not (tmp_path / "out").exists()


def test_fit_scoring_typo_is_one_config_error_line(data, tmp_path):
    code, output = run_cli("fit", "--data", data, "--user", "u1", "--out",
                           tmp_path / "u1.json", "--method", "vanilla", "--task-model",
                           "fake:t", "--scoring", "lettr")
    assert_one_line_error(code, output, "SharedModels.scoring", "'lettr'")
    assert not (tmp_path / "u1.json").exists()


def test_the_default_models_are_one_value_across_the_commands():
    defaults = SharedModels()
    assert (defaults.task, defaults.optimizer, defaults.embedder) == (
        embedded.DEFAULT_TASK, embedded.DEFAULT_OPTIMIZER, embedded.DEFAULT_EMBEDDER)
    bench = BenchConfig(data="d", out="o")
    assert (bench.task_model, bench.optimizer_model, bench.embedder, bench.scoring) == (
        defaults.task, defaults.optimizer, defaults.embedder, defaults.scoring)
    group = typer.main.get_command(app)
    commands = {"fit": group.commands["fit"], "predict": group.commands["predict"],
                "bench opinionqa": group.commands["bench"].commands["opinionqa"]}
    for name, command in commands.items():
        params = {p.name: p for p in command.params}
        # bench's model options are unset (None) and fall back to SharedModels' fields
        shown = {k: params[k].default for k in ("task_model", "optimizer_model", "scoring")}
        expected = {"task_model": defaults.task, "optimizer_model": defaults.optimizer,
                    "scoring": defaults.scoring}
        assert shown == (dict.fromkeys(expected) if name.startswith("bench") else expected), name


def test_shared_models_is_a_checked_config_whose_loaded_models_stay_private():
    with pytest.raises(ConfigError, match="SharedModels.scoring"):
        SharedModels(scoring="lettr")
    with pytest.raises(ConfigError, match="SharedModels.scoring"):
        SharedModels.of(FakeLLM(model_id="t"), scoring="lettr")
    llm = FakeLLM(model_id="t")
    models = SharedModels.of(llm, scoring="text")
    assert models.task_llm is llm
    assert models.to_dict() == {"task": "t", "optimizer": "t",
                                "embedder": embedded.DEFAULT_EMBEDDER, "scoring": "text"}
    assert SharedModels.from_dict(models.to_dict()) == models
    with pytest.raises(ConfigError, match="unknown key.*_loaded"):
        SharedModels.from_dict({"_loaded": {}})
    assert dataclasses.replace(models, task="u")._loaded is models._loaded  # as before


@pytest.mark.parametrize("config", [
    FermiConfig(), BenchConfig(data="d", out="o", settings=MethodSettings(fermi={"tau": {}})),
    FSPOTrainConfig(train_files=["a"], lora=LoraSettings(target_modules=["q", "v"])),
    Limits(user_calls=3)], ids=lambda c: type(c).__name__)
def test_to_dict_is_asdict_for_configs_without_private_fields(config):
    assert config.to_dict() == dataclasses.asdict(config)
