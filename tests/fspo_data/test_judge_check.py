"""The judge check: known pairs, its metrics with calibration off and on, the CLI report; and
how `fspo eval` finds the users' descriptions and the domain's guidelines for its judge."""

import json
import math

from typer.testing import CliRunner

from personalign.cli.fspo_train_cmd import _domain, _found_descriptions, _protocol, app
from personalign.fspo.data.judge import GUIDELINES, JUDGE_PREFIX, JUDGE_PROMPT, PairwiseJudge, PairJob
from personalign.fspo.data.judge_check import (
    check_judge, opinionqa_known_pairs, synthetic_known_pairs,
)
from personalign.runtime.llm.fake import FakeLLM

from tests.fspo_data.test_cli import _users_file


def _first_response(item) -> str:
    return item.prompt.split("Response A:\n")[1].split("\n\nResponse B:")[0]


def _rows(result, source="synthetic"):
    return {r["consistency"]: r for r in result["table"] if r["source"] == source}


def test_synthetic_pairs_swap_sides_between_opposite_users():
    pairs = synthetic_known_pairs()
    assert len(pairs) == 36 and len({p.pair_id for p in pairs}) == 36
    by_question: dict[str, list] = {}
    for p in pairs:
        by_question.setdefault(p.question, []).append(p)
        assert p.guidelines in GUIDELINES.values() and p.description
    for two in by_question.values():  # one question, two users, the sides swapped
        a, b = two
        assert (a.chosen, a.rejected) == (b.rejected, b.chosen)
        assert a.description != b.description


def test_a_judge_that_reads_the_user_is_right_in_both_orders():
    pairs = synthetic_known_pairs()
    chosen = {(p.description, p.question): p.chosen for p in pairs}

    def fits(item) -> int:
        description = item.prefix.split("User description: ")[1].strip()
        question = item.prompt.split("This user asked:\n")[1].split("\n\nResponse A:")[0]
        return 0 if _first_response(item) == chosen[(description, question)] else 1

    rows = _rows(check_judge(FakeLLM(chooser=fits), pairs))
    for rule in ("strict", "calibrated"):
        assert rows[rule]["accuracy"] == 1.0 and rows[rule]["decided"] == 1.0
        assert rows[rule]["ties"] == 0.0 and rows[rule]["accuracy_on_decided"] == 1.0


def test_a_judge_blind_to_the_user_scores_one_half():
    # one fixed side per question, whoever asks: right for one of its users, wrong for the other
    pairs = synthetic_known_pairs()
    fixed = set({p.question: p.chosen for p in pairs}.values())
    blind = FakeLLM(chooser=lambda item: 0 if _first_response(item) in fixed else 1)
    rows = _rows(check_judge(blind, pairs))
    assert rows["strict"]["decided"] == 1.0 and rows["strict"]["accuracy"] == 0.5


def test_a_judge_that_always_says_a_ties_everything():
    rows = _rows(check_judge(FakeLLM(chooser=lambda item: 0), synthetic_known_pairs(4)))
    strict, calibrated = rows["strict"], rows["calibrated"]
    assert strict["ties"] == 1.0 and strict["accuracy"] == 0.5
    assert strict["position_bias"] == math.log(0.7 / 0.3)
    # its bias removed, nothing is left to decide by
    assert calibrated["ties"] == 1.0 and calibrated["accuracy_on_decided"] is None


def test_opinionqa_known_pairs_are_the_persons_answers(dev_data_path):
    pairs = opinionqa_known_pairs(dev_data_path, users=2, per_user=3)
    assert len(pairs) == 6 and len({p.pair_id.split("/")[0] for p in pairs}) == 2
    for p in pairs:
        assert p.source == "opinionqa" and p.description and p.chosen != p.rejected
        assert p.chosen in p.question and p.rejected in p.question  # both are its options
        assert p.guidelines == GUIDELINES["opinionqa"]


def test_judge_prompt_holds_the_pair_the_user_and_the_guidelines():
    xy, yx = PairwiseJudge.items("A child.", "Keep it simple.", PairJob("Why?", "x", "y"))
    assert xy.prefix == yx.prefix == JUDGE_PREFIX.format(description="A child.")
    assert xy.prompt == JUDGE_PROMPT.format(question="Why?", a="x", b="y",
                                            guidelines="Keep it simple.", description="A child.")
    assert xy.prompt.count("A child.") == 1  # said once more, right before the request
    assert "Response A:\ny" in yx.prompt and "Response B:\nx" in yx.prompt
    assert "Answer with A or B" in xy.prompt and xy.options == ("A", "B")


def test_judge_check_command_writes_its_table(tmp_path):
    result = CliRunner().invoke(app, ["judge-check", "--out", str(tmp_path / "check"),
                                      "--judge", "fake:j", "--synthetic-limit", "6"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "check" / "judge_check.json").read_text())
    assert saved["spec"] == "fake:j" and len(saved["pairs"]) == 6
    assert [r["consistency"] for r in saved["table"]] == ["strict", "calibrated"]
    md = (tmp_path / "check" / "judge_check.md").read_text()
    assert "| synthetic | off | 6 |" in md and "| synthetic | on | 6 |" in md


def test_eval_finds_descriptions_and_domain_in_the_data(tmp_path):
    from personalign.cli.fspo_data_cmd import app as data_app

    data = _users_file(tmp_path / "a.jsonl", "a", 4)
    out = tmp_path / "ep"
    result = CliRunner().invoke(data_app, ["opinionqa", "--data", str(data), "--out", str(out),
                                           "--shots", "2", "--passes", "1",
                                           "--test-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    found = _found_descriptions(records, [out / "test.jsonl"], None)
    users = {r["user_id"] for r in records}
    assert set(found) == users and all("30-49" in d for d in found.values())
    assert _domain("opinionqa-preferences", records) == "opinionqa"
    synthetic = [{"user_id": "u", "meta": {"query_meta": {"domain": "elix"}}}]
    assert _domain("fspo-synthetic", synthetic) == "elix"
    assert _domain("fspo-synthetic", [{"user_id": "u"}]) is None
    # the data's domain wins over the protocol's, which defaults from the data
    assert _domain("opinionqa-preferences", synthetic) == "elix"
    assert _protocol(synthetic) == "fspo-synthetic"
    assert _protocol(records) == "opinionqa-preferences"
