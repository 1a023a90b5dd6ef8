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
