"""Cross-LLM transfer: Fermi's pool fit with task model A, evaluated with task model B."""

import json
from dataclasses import replace

import pytest

from personalign.bench.runner import BenchConfig, run_benchmark
from personalign.fermi.personalizer import FermiTransfer, transfer
from personalign.methods import MethodSettings, build, load
from personalign.runtime.data.records import User
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import BagEmbedder, keyword_task_llm, make_user, scripted_optimizer


def _models(eval_llm, fit_llm) -> SharedModels:
    """B (``eval_llm``) is the run's task model; A (``fit_llm``) is loaded beside it."""
    models = SharedModels.of(eval_llm, scripted_optimizer(), BagEmbedder())
    models._loaded[(fit_llm.model_id, ())] = fit_llm
    return models


def _always(choice: int, model_id: str) -> FakeLLM:
    return FakeLLM(chooser=lambda item: choice, model_id=model_id)


def _train(n=20):
    u = make_user("u1", 30)
    return User(u.user_id, dict(u.profile), u.opinions[:n]), list(u.opinions[n:])


def test_correctness_is_measured_again_with_the_eval_model():
    train, _ = _train()
    # A answers option 0 everywhere, B option 1: their correctness on the same prompts differ
    models = _models(_always(1, "model-b"), _always(0, "model-a"))
    settings = MethodSettings(preset="tiny")
    recomputed = build("fermi_transfer:model-a", models, settings).fit(train)
    native_a = recomputed.fitted_with
    answers = [o.answer for o in train.opinions]
    expected_a = [float(a == 0) for a in answers]
    expected_b = [float(a == 1) for a in answers]
    # the demo part is scored too where the config says so: compare on the pool's questions
    n = len(native_a.pool[0].correctness)
    assert all(p.correctness == expected_a[:n] for p in native_a.pool)
    assert all(p.correctness == expected_b[:n] for p in recomputed.estimator.pool)
    assert recomputed.estimator.fit_task_model["model_id"] == "model-b"
    assert "fermi/transfer" in models.task_llm.usage.by_phase
    scores = recomputed.fit_report()["transfer"]
    size = len(native_a.pool)
    assert scores["fit_pool_scores"] == pytest.approx([sum(expected_a[:n]) / n] * size)
    assert scores["eval_pool_scores"] == pytest.approx([sum(expected_b[:n]) / n] * size)

    reused = FermiTransfer.from_spec(models, "model-a", MethodSettings(
        preset="tiny", transfer_correctness="fit")).fit(train)
    assert all(p.correctness == expected_a[:n] for p in reused.estimator.pool)
    assert reused.fit_report()["transfer"]["correctness"] == "fit"


def test_transfer_to_the_same_model_keeps_the_correctness():
    train, _ = _train()
    llm = keyword_task_llm()
    models = _models(llm, llm)
    native = build("fermi", models, MethodSettings(preset="tiny")).fit(train).estimator
    moved = transfer(native, llm, train.opinions, "eval")
    assert [p.correctness for p in moved.pool] == [p.correctness for p in native.pool]
    assert [p.prompt for p in moved.pool] == [p.prompt for p in native.pool]


def test_transferred_fit_saves_loads_and_needs_a_fit_model(tmp_path):
    train, questions = _train()
    models = _models(keyword_task_llm(), _always(2, "model-a"))
    method = build("fermi_transfer:model-a", models, MethodSettings(preset="tiny")).fit(train)
    before = [a.choice for a in method.predict(questions)]
    again = load(method.save(tmp_path / "t.json"), models)
    assert [a.choice for a in again.predict(questions)] == before
    with pytest.raises(ConfigError, match="fit with"):
        build("fermi_transfer", models)


def test_benchmark_reports_the_transfer_gap(tmp_path):
    users = [make_user(f"u{i}", 40) for i in range(2)]
    models = _models(keyword_task_llm(), _always(0, "model-a"))
    cfg = BenchConfig(data="synthetic", out=str(tmp_path / "run"), users=None,
                      methods=["fermi", "fermi_transfer:model-a"],
                      settings=MethodSettings(preset="tiny"))
    res = run_benchmark(cfg, users, models=models, progress=False)
    pairs = {(p["method"], p["baseline"]) for p in res.summary["paired"]}
    assert ("fermi_transfer:model-a", "fermi") in pairs
    rows = [json.loads(x) for x in (res.out / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"fermi", "fermi_transfer:model-a"}
    assert "Fermi (transferred) (model-a)" in res.summary["per_method_md"]


def test_a_saved_fit_transfers_after_load(tmp_path):
    train, questions = _train()
    models = _models(_always(1, "model-b"), _always(0, "model-a"))
    fit_models = replace(models, task="model-a")
    fitted = build("fermi", fit_models, MethodSettings(preset="tiny")).fit(train)
    loaded = load(fitted.save(tmp_path / "f.json"), fit_models)
    moved = FermiTransfer.from_fitted(loaded, models, train)
    assert moved.models.task == "model-b" and moved.fit_model == "model-a"
    n = len(moved.estimator.pool[0].correctness)
    assert all(p.correctness == [float(o.answer == 1) for o in train.opinions][:n]
               for p in moved.estimator.pool)
    assert all(a.choice == 1 for a in moved.predict(questions))
    with pytest.raises(ConfigError, match="only a fitted fermi pool"):
        FermiTransfer.from_fitted(build("vanilla", fit_models).fit(train), models, train)
