import pytest
from typer.testing import CliRunner

from personalign.cli.main import app
from personalign.runtime.errors import ConfigError, DataError


def test_train_without_episodes_is_a_config_error():
    result = CliRunner().invoke(app, ["fspo", "train", "--steps", "1"])
    assert isinstance(result.exception, ConfigError)


def test_bad_episode_file_names_line_and_field(tmp_path):
    bad = tmp_path / "e.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c", "rejected": "r", "user_id": "u"}\n'
                   '{"prompt": "p", "chosen": "c", "user_id": "u"}\n')
    result = CliRunner().invoke(app, ["fspo", "train", "--train", str(bad)])
    assert isinstance(result.exception, DataError)
    assert result.exception.line == 2 and result.exception.field == "rejected"


def test_eval_needs_a_model(tmp_path):
    ok = tmp_path / "e.jsonl"
    ok.write_text('{"prompt": "p", "chosen": "c", "rejected": "r", "user_id": "u"}\n')
    result = CliRunner().invoke(app, ["fspo", "eval", "--episodes", str(ok), "--out",
                                      str(tmp_path / "r")])
    assert isinstance(result.exception, ConfigError)


@pytest.mark.parametrize("spec", ["nameonly", "x=base:sideways"])
def test_eval_model_spec_errors(tmp_path, spec):
    ok = tmp_path / "e.jsonl"
    ok.write_text('{"prompt": "p", "chosen": "c", "rejected": "r", "user_id": "u"}\n')
    result = CliRunner().invoke(app, ["fspo", "eval", "--episodes", str(ok), "--out",
                                      str(tmp_path / "r"), "--model", spec])
    assert isinstance(result.exception, ConfigError)


def test_train_options_come_from_the_config_fields(tmp_path, monkeypatch):
    """Every scalar FSPOTrainConfig field is an option, and a given one overrides the file."""
    import dataclasses

    from personalign.fspo.train import config as config_module
    from personalign.fspo.train.trainer import FSPOTrainer

    result = CliRunner().invoke(app, ["fspo", "train", "--help"])
    for f in dataclasses.fields(config_module.FSPOTrainConfig):
        if f.name not in ("lora", "train_files", "eval_files", "eval_users", "resume"):
            assert "--" + f.name.replace("_", "-") in result.output, f.name
    seen = {}

    def fake_fit(self):
        seen["config"] = self.config
        raise SystemExit(0)

    monkeypatch.setattr(FSPOTrainer, "fit", fake_fit)
    monkeypatch.setattr(FSPOTrainer, "__init__", lambda self, cfg, **kw: setattr(
        self, "config", cfg))
    episodes = tmp_path / "e.jsonl"
    episodes.write_text('{"prompt": "p", "chosen": "c", "rejected": "r", "user_id": "u"}\n')
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("steps: 7\nlr: 0.5\nloss: dpo\n")
    CliRunner().invoke(app, ["fspo", "train", "-c", str(cfg_file), "--train", str(episodes),
                             "--steps", "3", "--budget-clock", "cpu"])
    cfg = seen["config"]
    assert (cfg.steps, cfg.lr, cfg.loss, cfg.budget_clock) == (3, 0.5, "dpo", "cpu")
    bad = CliRunner().invoke(app, ["fspo", "train", "--train", str(episodes), "--loss", "nope"])
    assert isinstance(bad.exception, ConfigError) and "loss" in str(bad.exception)
