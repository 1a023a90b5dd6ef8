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
    pairs = [PreferencePair(f"u{u}", f"q{i}?", f"good {i}", f"bad {i}", user_description="D",
                            rejected_description="E") for u in range(5) for i in range(6)]
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


def test_description_variant_without_rejected_descriptions_is_skipped(tmp_path):
    pairs = [PreferencePair(f"u{u}", f"q{i}?", f"good {i}", f"bad {i}", user_description="D")
             for u in range(5) for i in range(6)]
    write_records(pairs, tmp_path / "pairs.jsonl")
    result = CliRunner().invoke(app, ["episodes", "--pairs", str(tmp_path / "pairs.jsonl"),
                                      "--shots", "2", "--out", str(tmp_path / "ep"),
                                      "--variant", "user-description"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "skipped the user-description variant" in result.output
    assert "30 of 30 pairs" in result.output
    assert not (tmp_path / "ep").exists()


def _users_file(path: Path, prefix: str, n_users: int) -> Path:
    lines = []
    for u in range(n_users):
        ops = [{"qid": f"Q{i}", "question": f"Question {i}?", "options": ["Yes", "No", "Maybe"],
                "answer": (u + i) % 3} for i in range(30)]
        lines.append(json.dumps({"user_id": f"{prefix}{u}", "profile": {"AGE": "30-49"},
                                 "opinions": ops}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_opinionqa_across_files(tmp_path):
    train = _users_file(tmp_path / "a.jsonl", "a", 3)
    test = _users_file(tmp_path / "b.jsonl", "b", 2)
    out = tmp_path / "ep"
    result = CliRunner().invoke(app, ["opinionqa", "--train-data", str(train), "--test-data",
                                      str(test), "--out", str(out), "--shots", "4",
                                      "--passes", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_users"] == ["a0", "a1", "a2"] and summary["test_users"] == ["b0", "b1"]
    assert summary["split"] == "across files"
    test_rows = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    train_rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert {r["user_id"] for r in test_rows} == {"b0", "b1"}
    assert {r["user_id"] for r in train_rows} == {"a0", "a1", "a2"}
    # the same user in both files is refused; and one file with --train-data alone too
    again = CliRunner().invoke(app, ["opinionqa", "--train-data", str(train), "--test-data",
                                     str(train), "--out", str(tmp_path / "x")])
    assert again.exit_code != 0 and "in both files" in str(again.exception)
    alone = CliRunner().invoke(app, ["opinionqa", "--train-data", str(train), "--out",
                                     str(tmp_path / "y")])
    assert alone.exit_code != 0 and "--test-data" in str(alone.exception)


def test_opinionqa_description_variant_is_skipped(tmp_path):
    data = _users_file(tmp_path / "a.jsonl", "a", 5)
    result = CliRunner().invoke(app, ["opinionqa", "--data", str(data), "--out",
                                      str(tmp_path / "ep"), "--variant", "user-description"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "skipped the user-description variant" in result.output
    assert not (tmp_path / "ep").exists()


def test_opinionqa_rejected_rule_option(tmp_path):
    """--rejected reaches every pair's meta and the summary; the default is uniform-other."""
    from personalign.fspo.data.opinionqa_prefs import DEFAULT_REJECTED

    data = _users_file(tmp_path / "a.jsonl", "a", 5)
    for rule, per_opinion in ((None, 1), ("every-other", 2), ("ordinal-farthest", 1)):
        out = tmp_path / (rule or "default")
        args = ["opinionqa", "--data", str(data), "--out", str(out), "--shots", "4",
                "--passes", "1"] + (["--rejected", rule] if rule else [])
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rejected_rule"] == (rule or DEFAULT_REJECTED)
        pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
        assert {p["meta"]["rejected_rule"] for p in pairs} == {rule or DEFAULT_REJECTED}
        assert summary["pairs"] == len(pairs) == 5 * 30 * per_opinion
    bad = CliRunner().invoke(app, ["opinionqa", "--data", str(data), "--out",
                                   str(tmp_path / "bad"), "--rejected", "nearest"])
    assert bad.exit_code != 0 and "rejected-option rule" in str(bad.exception)
