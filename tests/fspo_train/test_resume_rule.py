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
