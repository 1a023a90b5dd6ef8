"""A few real training steps on the embedded SmolLM2 with LoRA; save/load gives equal scores."""

import json

import numpy as np
import pytest
import torch

from personalign.fspo.data.episodes import build_episodes
from personalign.fspo.train.config import FSPOTrainConfig, LoraSettings
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
    manifest = json.loads((final / "fspo_model.json").read_text())
    # what inference repeats of the data (not OpinionQA pairs: no rejected-option rule)
    assert (manifest["variant"], manifest["rejected_rule"], manifest["sft_targets"]) == \
        ("default", None, "both")
    # The policy moved away from the reference (rewards are no longer all zero).
    last = [r for r in rows if r["split"] == "summary" and r["stage"] == "pref"][-1]
    assert last["eval_reward_margin"] != 0.0


SHOTS = [PreferencePair("u_c", q, a, b) for q, (a, b) in zip(QUESTIONS, ANSWERS)]


def live_logps(model, tokenizer, prompt, options):
    """Normalized option log-probs of the live (training-side) model, through the scoring
    function the trainer uses."""
    from personalign.fspo.personalizer import RESPONSE_HEADER
    from personalign.fspo.train.scoring import completion_logps, encode

    example = encode(tokenizer, prompt, [f"{RESPONSE_HEADER}{o}\n" for o in options],
                     max_prompt_tokens=1024, max_completion_tokens=64)
    with torch.no_grad():
        x = completion_logps(model, example, tokenizer.pad_token_id)[0].double().numpy()
    return x - np.logaddexp.reduce(x)


def _fspo(model_dir, n_shots=3):
    from personalign.fspo.personalizer import FSPO
    from personalign.runtime.data.records import Opinion, User
    from personalign.runtime.personalizer import SharedModels

    method = FSPO(SharedModels(), str(model_dir), n_shots=n_shots)
    method.fit(User("u_c", pairs=tuple(SHOTS[:n_shots])))
    question = Opinion("Cats or dogs?", ("Cats", "Dogs", "Neither"), 0, qid="q")
    return method, question


def test_saved_model_on_the_engine_scores_like_the_live_model(trained):
    from personalign.fspo.data.opinionqa_prefs import opinion_prompt

    trainer, final, _, _held_out = trained
    method, question = _fspo(final)
    engine = np.array(method.predict([question])[0].logprobs)
    prompt = method.prompt(opinion_prompt(question))
    live = live_logps(trainer.model, trainer.tokenizer, prompt, question.options)
    np.testing.assert_allclose(engine, live, rtol=0, atol=1e-4)
    with trainer.model.disable_adapter():
        live_ref = live_logps(trainer.model, trainer.tokenizer, prompt, question.options)
    assert not np.allclose(live, live_ref, atol=1e-3)  # the adapter matters
    # Greedy generation on the engine writes what the live model writes, one section only.
    one_shot, _ = _fspo(final, n_shots=1)
    text = one_shot.respond([{"role": "user", "content": "Cats or dogs?"}], max_tokens=6)
    ids = trainer.tokenizer(one_shot.prompt("Cats or dogs?") + "## Preferred Response\n",
                            return_tensors="pt").input_ids
    with torch.no_grad():
        out = trainer.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=6, do_sample=False,
                                     pad_token_id=trainer.tokenizer.eos_token_id)
    live_text = trainer.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert text == live_text.split("\n#")[0].strip()
    assert text and "##" not in text


def test_engine_reuses_the_shared_shots_with_equal_scores(trained):
    from personalign.runtime.data.records import Opinion

    _trainer, final, _, _ = trained
    method, question = _fspo(final)
    other = Opinion("Tea or coffee?", ("Tea", "Coffee", "Neither"), 0, qid="t")
    llm = method.llm
    llm.cache = None
    both = method.predict([question, other])
    cache = llm.prompt_cache
    # The second question ran only the tokens after the shared shots.
    assert cache.reused_tokens > 2 * (cache.run_tokens - cache.reused_tokens)
    cache.clear()
    alone = method.predict([other])[0]
    np.testing.assert_allclose(both[1].logprobs, alone.logprobs, rtol=0, atol=1e-4)


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
    from personalign.bench.preferences import EpisodeModel, evaluate_episodes
    from personalign.runtime.llm.fake import FakeLLM

    _, final, out, held_out = trained
    models = [EpisodeModel("base", "base"), EpisodeModel("fspo", str(final),
                                                          reference_name="sft-only")]
    kw = dict(protocol="opinionqa-preferences", judge=FakeLLM(), win_max_items=1,
              gen_max_tokens=4, descriptions={"u_c": "Prefers the first of two things."},
              progress=False)
    summary = evaluate_episodes(models, held_out, tmp_path / "report", **kw)
    by = {r["method"]: r for r in summary["per_method"]}
    assert set(by) == {"base", "fspo", "sft-only"}
    assert np.isfinite(by["fspo"]["reward_accuracy"])
    rows = [json.loads(x) for x in (tmp_path / "report" / "results.jsonl").read_text()
            .splitlines()]
    base_rows = [r for r in rows if r["method"] == "base"]
    assert len(base_rows) == len(held_out) and "reward_correct" not in base_rows[0]
    # Choice accuracy is the share of rows whose top-scored option is the user's answer.
    for row in base_rows:
        assert row["choice"] == int(np.argmax(row["logprobs"]))
        assert row["correct"] == float(row["choice"] == row["answer"])
    assert all(r["n_options"] == 3 for r in rows)
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "Win rate" in readme and "sft-only" in readme
    # Finished units are reused: a second run scores nothing.
    from personalign.runtime.personalizer import SharedModels

    shared = SharedModels()
    again = evaluate_episodes(models, held_out, tmp_path / "report", shared=shared, **kw)
    assert not shared.loaded_llms()
    assert again["per_method_md"] == summary["per_method_md"]


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
    method, question = _fspo(final)
    from personalign.fspo.data.opinionqa_prefs import opinion_prompt

    live = live_logps(trainer.model, trainer.tokenizer,
                      method.prompt(opinion_prompt(question)), question.options)
    np.testing.assert_allclose(method.predict([question])[0].logprobs, live, atol=1e-4)


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
    summary = (tmp_path / "rep" / "per_method.csv").read_text()
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


def test_validation_users_choose_the_final_step(tmp_path):
    from personalign.fspo.train.trainer import FSPOTrainer

    episodes = [e.to_dict() for e in build_episodes(_pairs(), n_shots=1, passes=3, seed=0)]
    cfg = FSPOTrainConfig(output_dir=str(tmp_path), lora=LoraSettings(r=2, alpha=4),
                          sft_steps=0, steps=3, grad_accum=1, lr=5e-3, warmup_steps=0,
                          eval_every=1, save_every=0, eval_max_pairs=0, validation_users=1,
                          seed=0)
    trainer = FSPOTrainer(cfg, train_records=episodes, progress=False)
    final = trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval" and r["stage"] == "pref"]
    summary = [r for r in rows if r["split"] == "summary" and r["stage"] == "pref"][-1]
    scores = [(r["step"], r["validation_accuracy"]) for r in evals]
    scores.append((summary["step"], summary["eval_validation_accuracy"]))
    assert [s for s, _ in scores] == [0, 1, 2, 3]
    # Validation accuracy is a share of the held-out user's questions.
    held = {r["user_id"] for r in trainer.validation_records}
    n = len(trainer.validation_records)
    assert len(held) == 1 and n == sum(e["user_id"] in held for e in episodes) > 1
    assert all(round(a * n) == a * n for _, a in scores)
    best_step = max(scores, key=lambda s: (s[1], -s[0]))[0]  # ties keep the earlier step
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["step"] == best_step == summary["final_step"]
    # final/ holds the chosen step's weights, not necessarily the last step's.
    weights = "adapter/adapter_model.safetensors"
    assert (final / weights).read_bytes() == (tmp_path / "best" / weights).read_bytes()


def test_pref_ft_run_and_the_rejected_rule_in_its_manifest(tmp_path):
    """Pref-FT alone (SFT on the chosen completions, no preference steps) on OpinionQA-made
    episodes: final/ loads as a method and its manifest carries the data's rejected rule."""
    from personalign.fspo.data.opinionqa_prefs import opinion_pairs
    from personalign.fspo.personalizer import FSPO
    from personalign.fspo.train.trainer import FSPOTrainer
    from personalign.runtime.data.records import Opinion, User
    from personalign.runtime.personalizer import SharedModels

    ops = tuple(Opinion(f"{q}", (a, b, "Neither"), 0, qid=f"q{i}")
                for i, (q, (a, b)) in enumerate(zip(QUESTIONS, ANSWERS)))
    pairs = [p for u in ("u_a", "u_b") for op in ops
             for p in opinion_pairs(User(u, {}, ops), op, rejected="every-other")]
    episodes = [e.to_dict() for e in build_episodes(pairs, n_shots=1, passes=1, seed=0)][:2]
    cfg = FSPOTrainConfig(output_dir=str(tmp_path), lora=LoraSettings(r=2, alpha=4),
                          sft_steps=1, sft_targets="chosen", steps=0, grad_accum=1,
                          sft_lr=1e-3, warmup_steps=0, eval_every=0, save_every=0, seed=0)
    final = FSPOTrainer(cfg, train_records=episodes, eval_records=[], progress=False).fit()
    manifest = json.loads((final / "fspo_model.json").read_text())
    assert (manifest["rejected_rule"], manifest["sft_targets"]) == ("every-other", "chosen")
    method = FSPO(SharedModels(), str(final), n_shots=2).fit(User("u_c", {}, ops))
    assert len(method._pairs(User("u_c", {}, ops))) == 2 * len(ops)  # every-other again
    assert len(method.predict(list(ops[:1]))[0].logprobs) == 3
