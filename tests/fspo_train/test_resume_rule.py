"""The trainer's resume rule (runtime.runs.RunFolder), checked before any model is loaded."""

import json

import pytest

from personalign.fspo.train import trainer as trainer_module
from personalign.fspo.train.config import FSPOTrainConfig
from personalign.fspo.train.trainer import FSPOTrainer
from personalign.runtime.errors import ConfigError

RECORDS = [{"prompt": "## Question\nTea or coffee?\n", "chosen": "Tea", "rejected": "Coffee",
            "user_id": "u1"}]


class ModelLoading(Exception):
    """Raised in place of loading the model: the run got past its input check."""


@pytest.fixture()
def no_model(monkeypatch):
    def load_base(model):
        raise ModelLoading(model)

    monkeypatch.setattr(trainer_module, "load_base", load_base)


def _trainer(cfg, records=RECORDS):
    return FSPOTrainer(cfg, train_records=records, eval_records=[], progress=False)


def _passes_the_check(cfg, records=RECORDS):
    with pytest.raises(ModelLoading):
        _trainer(cfg, records).fit()


def _fingerprint(folder):
    return json.loads((folder / "run.json").read_text())["fingerprint"]


def test_changed_inputs_stop_with_the_field_named(tmp_path, no_model):
    cfg = FSPOTrainConfig(output_dir=str(tmp_path), steps=2, lr=1e-4)
    _passes_the_check(cfg)
    first = _fingerprint(tmp_path)
    # Run control (a raised budget, more steps, threads, logging) resumes.
    _passes_the_check(cfg.updated(max_minutes=30.0, sft_max_minutes=5.0, steps=5, threads=2,
                                  eval_every=1, save_every=1))
    with pytest.raises(ConfigError, match=r"changed: config\.lr\b"):
        _trainer(cfg.updated(lr=1e-3)).fit()
    edited = [dict(RECORDS[0], chosen="Green tea")]
    with pytest.raises(ConfigError, match="changed: train_records"):
        _trainer(cfg, edited).fit()
    with pytest.raises(ConfigError, match=r"config\.model.*model|model.*config\.model"):
        _trainer(cfg.updated(model="gemma3-270m")).fit()
    assert _fingerprint(tmp_path) == first


def test_no_resume_starts_over_with_the_new_inputs(tmp_path, no_model):
    cfg = FSPOTrainConfig(output_dir=str(tmp_path), lr=1e-4)
    _passes_the_check(cfg)
    for folder in ("checkpoints", "sft", "final"):
        (tmp_path / folder).mkdir()
    (tmp_path / "final" / "COMPLETE").write_text("")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    changed = cfg.updated(lr=1e-3)
    _passes_the_check(changed.updated(resume=False))
    assert not any((tmp_path / name).exists()
                   for name in ("checkpoints", "sft", "final", "metrics.jsonl"))
    _passes_the_check(changed)  # the new inputs are the folder's now


def test_a_complete_run_is_reused_only_for_the_same_inputs(tmp_path, no_model):
    cfg = FSPOTrainConfig(output_dir=str(tmp_path))
    _passes_the_check(cfg)
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "COMPLETE").write_text("")
    assert _trainer(cfg).fit() == tmp_path / "final"  # nothing loaded
    with pytest.raises(ConfigError, match=r"config\.beta"):
        _trainer(cfg.updated(beta=0.1)).fit()


def _finished_on_budget(folder, step=10, cpu_s=600.0):
    (folder / "final").mkdir()
    (folder / "final" / "COMPLETE").write_text("")
    summary = {"stage": "pref", "step": step, "split": "summary", "elapsed_s": 900.0,
               "cpu_s": cpu_s, "stopped_by_budget": True}
    (folder / "metrics.jsonl").write_text(json.dumps(summary) + "\n")


def test_a_run_stopped_by_its_budget_continues_when_the_budget_is_raised(tmp_path, no_model):
    # max_minutes and budget_clock are run control, not inputs: raising them resumes.
    cfg = FSPOTrainConfig(output_dir=str(tmp_path), steps=100, max_minutes=10.0,
                          budget_clock="cpu")
    _passes_the_check(cfg)
    _finished_on_budget(tmp_path, step=10, cpu_s=600.0)
    assert _trainer(cfg).fit() == tmp_path / "final"        # same budget: nothing to do
    _passes_the_check(cfg.updated(max_minutes=20.0))        # raised: it loads and trains on


def test_a_run_that_reached_its_last_step_is_not_resumed(tmp_path, no_model):
    cfg = FSPOTrainConfig(output_dir=str(tmp_path), steps=10, max_minutes=10.0)
    _passes_the_check(cfg)
    _finished_on_budget(tmp_path, step=10)
    assert _trainer(cfg.updated(max_minutes=60.0)).fit() == tmp_path / "final"


def _mc_record(user, question, answer):
    options = ["Tea", "Coffee", "Neither"]
    return {"prompt": f"## Question\n{question}\n", "chosen": options[answer],
            "rejected": options[1 - answer], "user_id": user,
            "meta": {"query_meta": {"options": options, "answer": answer}}}


def test_validation_users_leave_training_and_give_their_questions():
    records = [_mc_record(u, f"q{i}", i % 2) for u in ("u1", "u2", "u3") for i in range(4)]
    cfg = FSPOTrainConfig(validation_users=1, validation_max_questions=3, seed=0)
    trainer = _trainer(cfg, records)
    held = {r["user_id"] for r in trainer.validation_records}
    assert len(held) == 1 and len(trainer.validation_records) == 3
    assert held.isdisjoint(r["user_id"] for r in trainer.train_records)
    assert len(trainer.train_records) == 8
    # The held-out user is a function of the seed, and so is the fingerprint of the training data.
    again = _trainer(cfg, records)
    assert {r["user_id"] for r in again.validation_records} == held
    assert again.inputs()["train_records"] == trainer.inputs()["train_records"]


def test_validation_users_must_leave_someone_to_train_on():
    records = [_mc_record(u, "q", 0) for u in ("u1", "u2")]
    with pytest.raises(ConfigError, match="leaves no training user"):
        _trainer(FSPOTrainConfig(validation_users=2), records)
