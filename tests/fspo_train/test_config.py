import json
from importlib.resources import files

import pytest

from personalign.fspo.train.config import FSPOTrainConfig
from personalign.runtime.errors import ConfigError


def test_defaults_follow_fspo():
    cfg = FSPOTrainConfig()
    assert cfg.beta == 0.01 and cfg.loss == "ipo_sum" and cfg.optimizer == "rmsprop"
    assert cfg.finetune == "lora"


def test_yaml_and_json_roundtrip(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("loss: dpo\nsteps: 7\nlora: {r: 4, alpha: 8}\ntrain_files: a.jsonl\n")
    cfg = FSPOTrainConfig.from_file(y)
    assert cfg.loss == "dpo" and cfg.steps == 7 and cfg.lora.r == 4
    assert cfg.train_files == ["a.jsonl"]
    cfg.save(tmp_path / "c.json")
    again = FSPOTrainConfig.from_file(tmp_path / "c.json")
    assert again == cfg
    assert json.loads((tmp_path / "c.json").read_text())["lora"]["alpha"] == 8


@pytest.mark.parametrize("text", ["loss: hinge\n", "bogus: 1\n", "optimizer: sgd\n",
                                  "beta: 0\n", "finetune: qlora\n"])
def test_bad_values_are_config_errors(tmp_path, text):
    y = tmp_path / "c.yaml"
    y.write_text(text)
    with pytest.raises(ConfigError):
        FSPOTrainConfig.from_file(y)


def test_updated_ignores_none():
    cfg = FSPOTrainConfig().updated(steps=3, lr=None)
    assert cfg.steps == 3 and cfg.lr == FSPOTrainConfig().lr


@pytest.mark.parametrize("name", ["opinionqa_cpu.yaml", "elix_cpu.yaml", "fspo_paper.yaml"])
def test_shipped_configs_load(name):
    path = files("personalign.fspo.train") / "configs" / name
    cfg = FSPOTrainConfig.from_file(str(path))
    assert cfg.steps > 0
    if name == "opinionqa_cpu.yaml":  # the recipe measured in the README
        assert (cfg.validation_users, cfg.validation_max_questions, cfg.max_minutes) == (6, 48, 100)
