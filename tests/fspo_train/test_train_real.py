"""A few real training steps on the embedded SmolLM2 with LoRA; save/load gives equal scores."""

import json

import numpy as np
import pytest
import torch

from personalign.fspo.data.episodes import build_episodes
from personalign.fspo.train.config import FSPOTrainConfig, LoraSettings
from personalign.fspo.train.model import PersonalizedModel
from personalign.runtime.data.records import PreferencePair

pytestmark = pytest.mark.real_model

# Two fictional users with opposite tastes (short texts keep sequences tiny).
QUESTIONS = ["Tea or coffee?", "Cats or dogs?", "Beach or mountains?"]
ANSWERS = [("Tea", "Coffee"), ("Cats", "Dogs"), ("Beach", "Mountains")]


def _pairs():
    pairs = []
    for user, flip in (("u_a", False), ("u_b", True), ("u_c", False)):
        for q, (x, y) in zip(QUESTIONS, ANSWERS):
            chosen, rejected = (y, x) if flip else (x, y)
            options = [x, y, "Neither"]
            pairs.append(PreferencePair(user_id=user, prompt=q, chosen=chosen, rejected=rejected,
                                        meta={"options": options,
                                              "answer": options.index(chosen)}))
    return pairs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    episodes = [e.to_dict() for e in build_episodes(_pairs(), n_shots=2, passes=2, seed=0)]
    train = [e for e in episodes if e["user_id"] != "u_c"][:4]
    held_out = [e for e in episodes if e["user_id"] == "u_c"][:2]
    out = tmp_path_factory.mktemp("fspo")
    cfg = FSPOTrainConfig(output_dir=str(out), lora=LoraSettings(r=4, alpha=8), sft_steps=1,
                          steps=2, grad_accum=2, lr=1e-3, sft_lr=1e-3, warmup_steps=0,
                          eval_every=1, save_every=1, eval_max_pairs=2, seed=0)
    from personalign.fspo.train.trainer import FSPOTrainer

    trainer = FSPOTrainer(cfg, train_records=train, eval_records=held_out, progress=False)
    final = trainer.fit()
    return trainer, final, out, held_out


def test_training_writes_metrics_checkpoints_and_final(trained):
    _trainer, final, out, _ = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train" and r["stage"] == "pref"]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) and "reward_accuracy" in r for r in train_rows)
    evals = [r for r in rows if r["split"] == "eval"]
    assert evals and all(r["pairs"] == 2 and "reward_margin" in r for r in evals)
    assert [r for r in rows if r["stage"] == "sft" and r["split"] == "train"]
    assert (final / "COMPLETE").exists() and (final / "adapter").exists()
    assert (final / "sft_adapter").exists()
    assert (out / "checkpoints").exists()
    # The policy moved away from the reference (rewards are no longer all zero).
    last = [r for r in rows if r["split"] == "summary" and r["stage"] == "pref"][-1]
    assert last["eval_reward_margin"] != 0.0


def test_save_load_gives_identical_scores(trained):
    trainer, final, _, _held_out = trained
    live = PersonalizedModel(trainer.model, trainer.tokenizer)
    loaded = PersonalizedModel.load(final)
    shots = [{"question": "Tea or coffee?", "chosen": "Tea", "rejected": "Coffee"}]
    options = ["Cats", "Dogs", "Neither"]
    a = live.option_logps(shots, "Cats or dogs?", options)
    b = loaded.option_logps(shots, "Cats or dogs?", options)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    ref_a = live.option_logps(shots, "Cats or dogs?", options, reference=True)
    ref_b = loaded.option_logps(shots, "Cats or dogs?", options, reference=True)
    np.testing.assert_allclose(ref_a, ref_b, rtol=0, atol=1e-5)
    assert not np.allclose(a, ref_a)  # the adapter matters
    choice = loaded.score_options(shots, "Cats or dogs?", options)
    assert choice.choice == int(np.argmax(b))
    assert np.exp(choice.logprobs).sum() == pytest.approx(1.0)
    # Greedy generation: the saved model writes what the live one writes, one section only.
    text = loaded.generate(shots, "Cats or dogs?", max_new_tokens=6)
    assert text == live.generate(shots, "Cats or dogs?", max_new_tokens=6)
    assert text.strip() and "##" not in text


def test_prompt_cache_reuses_the_shared_shots_with_equal_scores(trained):
    _trainer, final, _, _ = trained
    cached = PersonalizedModel.load(final)
    fresh = PersonalizedModel.load(final)
    shots = [{"question": q, "chosen": a, "rejected": b} for q, (a, b) in zip(QUESTIONS, ANSWERS)]
    for question, options in (("Cats or dogs?", ["Cats", "Dogs"]),
                              ("Tea or coffee?", ["Tea", "Coffee", "Neither"])):
        cached.prompt_cache.reused_tokens = cached.prompt_cache.run_tokens = 0
        for reference in (False, True):
            fresh.prompt_cache.clear()
            want = fresh.option_logps(shots, question, options, reference=reference)
            got = cached.option_logps(shots, question, options, reference=reference)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # The second question ran only the tokens after the shared shots, for both passes.
    assert cached.prompt_cache.reused_tokens > 5 * cached.prompt_cache.run_tokens


def test_rerun_is_a_no_op_and_resume_continues(trained):
    import shutil

    from personalign.fspo.train.trainer import FSPOTrainer

    trainer, final, out, held_out = trained
    again = FSPOTrainer(trainer.config, train_records=trainer.train_records,
                        eval_records=held_out, progress=False)
    assert again.fit() == final and again.model is None  # complete: nothing loaded
    # Ask for one more step: training resumes from the step-2 checkpoint, not from 0.
    shutil.rmtree(final)
    more = FSPOTrainer(trainer.config.updated(steps=3), train_records=trainer.train_records,
                       eval_records=held_out, progress=False)
    more.fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["split"] == "train" and r["stage"] == "pref"]
    assert steps == [1, 2, 3]
    assert len([r for r in rows if r["split"] == "train" and r["stage"] == "sft"]) == 1


def test_held_out_users_must_not_overlap(trained):
    from personalign.fspo.train.trainer import FSPOTrainer
    from personalign.runtime.errors import DataError

    trainer, _, _, held_out = trained
    with pytest.raises(DataError):
        FSPOTrainer(trainer.config, train_records=trainer.train_records + held_out,
                    eval_records=held_out, progress=False)


def test_evaluate_trained_vs_base_and_report(trained, tmp_path):
    from personalign.fspo.train.evaluate import evaluate_models
    from personalign.runtime.llm.fake import FakeLLM

    _, final, out, held_out = trained
    models = {"base": (lambda: PersonalizedModel.base(), "as-is"),
              "fspo": (lambda: PersonalizedModel.load(final), "as-is", "sft-only")}
    results = evaluate_models(models, held_out, tmp_path / "report", judge=FakeLLM(),
                              win_against="base", win_max_items=1, gen_max_new_tokens=4,
                              descriptions={"u_c": "Prefers the first of two things."},
                              progress=False)
    base, fspo, sft = results
    assert sft.name == "sft-only"
    assert "reward_accuracy" not in base.summary  # the base model has no reference
    assert fspo.summary["pairs"] == len(held_out) and "reward_accuracy" in fspo.summary
    # Choice accuracy is the share of rows whose top-scored option is the user's answer.
    for row in base.rows:
        assert row["choice"] == int(np.argmax(row["option_logps"]))
        assert row["choice_correct"] == float(row["choice"] == row["answer"])
    assert base.summary["choice_accuracy"] == pytest.approx(
        np.mean([r["choice_correct"] for r in base.rows]))
    assert all(r["n_options"] == 3 for r in fspo.rows)
    # The reference pass of FSPO is exactly the saved SFT-only model.
    sft_model = PersonalizedModel.load(out / "sft")
    rec = held_out[0]
    options = rec["meta"]["query_meta"]["options"]
    from personalign.fspo.train.model import completion_text

    direct = sft_model.completion_logps(
        rec["prompt"], [completion_text(o, sft_model.tokenizer.eos_token) for o in options])
    np.testing.assert_allclose(sft.rows[0]["option_logps"], direct, atol=1e-3)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "fspo" in summary and "sft-only" in summary
    assert (tmp_path / "report" / "accuracy.png").exists()

    # Finished models are reused: a second run loads nothing.
    def boom():
        raise AssertionError("model should not be loaded again")

    again = evaluate_models({"base": (boom, "as-is"), "fspo": (boom, "as-is", "sft-only")},
                            held_out, tmp_path / "report", judge=FakeLLM(),
                            win_against="base", win_max_items=1, gen_max_new_tokens=4,
                            descriptions={"u_c": "Prefers the first of two things."},
                            progress=False)
    assert [r.summary for r in again] == [r.summary for r in results]


def test_full_finetune_option(tmp_path):
    from personalign.fspo.train.trainer import FSPOTrainer

    episodes = [e.to_dict() for e in build_episodes(_pairs(), n_shots=1, passes=1, seed=0)]
    train = [e for e in episodes if e["user_id"] != "u_c"][:2]
    held_out = [e for e in episodes if e["user_id"] == "u_c"][:1]
    cfg = FSPOTrainConfig(output_dir=str(tmp_path), finetune="full", sft_steps=1, steps=1,
                          grad_accum=1, lr=1e-5, sft_lr=1e-5, warmup_steps=0, eval_every=0,
                          save_every=0, eval_max_pairs=1, loss="dpo", beta=0.1)
    trainer = FSPOTrainer(cfg, train_records=train, eval_records=held_out, progress=False)
    final = trainer.fit()
    loaded = PersonalizedModel.load(final)
    live = PersonalizedModel(trainer.model, trainer.tokenizer, reference=trainer.reference)
    shots = [{"question": "Tea or coffee?", "chosen": "Tea", "rejected": "Coffee"}]
    a = live.option_logps(shots, "Cats or dogs?", ["Cats", "Dogs"])
    np.testing.assert_allclose(a, loaded.option_logps(shots, "Cats or dogs?", ["Cats", "Dogs"]),
                               atol=1e-5)
    ref = loaded.option_logps(shots, "Cats or dogs?", ["Cats", "Dogs"], reference=True)
    assert not np.allclose(a, ref)


def test_cli_eval_on_a_training_run(trained, tmp_path):
    from typer.testing import CliRunner

    from personalign.cli.main import app

    _, _, out, held_out = trained
    episodes = tmp_path / "test.jsonl"
    episodes.write_text("".join(json.dumps(r) + "\n" for r in held_out))
    result = CliRunner().invoke(app, ["fspo", "eval", "--episodes", str(episodes), "--run",
                                      str(out), "--out", str(tmp_path / "rep"),
                                      "--max-per-user", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    summary = (tmp_path / "rep" / "summary.csv").read_text()
    for name in ("base-fewshot", "fspo", "sft-only"):
        assert name in summary


def test_cpu_budget_stops_training_cleanly(tmp_path):
    from personalign.fspo.train.trainer import FSPOTrainer

    episodes = [e.to_dict() for e in build_episodes(_pairs(), n_shots=1, passes=1, seed=0)]
    cfg = FSPOTrainConfig(output_dir=str(tmp_path), lora=LoraSettings(r=2, alpha=4),
                          sft_steps=0, steps=1000, grad_accum=1, max_minutes=0.0,
                          budget_clock="cpu", eval_max_pairs=0)
    final = FSPOTrainer(cfg, train_records=episodes, progress=False).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    summary = [r for r in rows if r["split"] == "summary"][-1]
    assert summary["stopped_by_budget"] and summary["step"] <= 1
    assert (final / "COMPLETE").exists()
