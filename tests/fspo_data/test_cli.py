"""`personalign fspo-data` commands that need no generator model."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personalign.cli.fspo_data_cmd import app
from personalign.fspo.data.episodes import write_records
from personalign.runtime.data.records import PreferencePair

DEV = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "opinionqa" / "dev.jsonl"


def test_episodes_command(tmp_path):
    pairs = [PreferencePair(f"u{u}", f"q{i}?", f"good {i}", f"bad {i}", user_description="D")
             for u in range(5) for i in range(6)]
    write_records(pairs, tmp_path / "pairs.jsonl")
    result = CliRunner().invoke(app, ["episodes", "--pairs", str(tmp_path / "pairs.jsonl"),
                                      "--shots", "2", "--passes", "2", "--out",
                                      str(tmp_path / "ep"), "--test-fraction", "0.4",
                                      "--variant", "user-description"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ep" / "summary.json").read_text())
    assert len(summary["test_users"]) == 2
    train = [json.loads(x) for x in (tmp_path / "ep" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (tmp_path / "ep" / "test.jsonl").read_text().splitlines()]
    assert len(train) == 3 * 2 * 2 and len(test) == 2 * 1 * 2
    assert not {r["user_id"] for r in train} & {r["user_id"] for r in test}
    assert train[0]["chosen"].startswith("## User Description\nD\n## Preferred Response\n")


@pytest.mark.skipif(not DEV.exists(), reason="shared OpinionQA data not present")
def test_opinionqa_command(tmp_path):
    result = CliRunner().invoke(app, ["opinionqa", "--data", str(DEV), "--out", str(tmp_path),
                                      "--shots", "8", "--passes", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not set(summary["train_users"]) & set(summary["test_users"])
    test = [json.loads(x) for x in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert test and all(r["n_shots"] == 8 for r in test)
    assert all(r["meta"]["query_meta"]["part"] == "test" for r in test)
