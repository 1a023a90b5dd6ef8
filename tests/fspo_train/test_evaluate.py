"""Evaluation logic without a real model: prompt modes, summaries, report files."""

import json

import pytest

from personalign.fspo.data.serialization import Shot, serialize_prompt
from personalign.fspo.train.evaluate import (
    EvalResult,
    final_question,
    summarize,
    transform_prompt,
    write_report,
    zero_shot_records,
)
from personalign.runtime.errors import DataError

PROMPT = serialize_prompt([Shot("Tea or coffee?", "Tea", "Coffee")], "Cats or dogs?")


def test_final_question_and_prompt_modes():
    rec = {"prompt": PROMPT, "user_id": "u1", "chosen": "x", "rejected": "y"}
    assert final_question(PROMPT) == "Cats or dogs?"
    assert transform_prompt(rec, "as-is") == PROMPT
    zero = transform_prompt(rec, "zero-shot")
    assert zero == serialize_prompt([], "Cats or dogs?") and "Example" not in zero
    oracle = transform_prompt(rec, "oracle", {"u1": "Loves cats."})
    assert oracle.startswith("# User Description\nLoves cats.\n\n# Example 1")
    with pytest.raises(DataError):
        transform_prompt(rec, "oracle", {})
    assert zero_shot_records([rec])[0]["n_shots"] == 0


def test_summary_macro_over_users_and_report(tmp_path):
    rows = [{"user_id": "a", "logp_correct": 1.0, "choice_correct": 1.0, "reward_correct": 1.0,
             "reward_margin": 0.2},
            {"user_id": "a", "logp_correct": 0.0, "choice_correct": 1.0, "reward_correct": 0.0,
             "reward_margin": -0.1},
            {"user_id": "b", "logp_correct": 1.0, "choice_correct": 0.0, "reward_correct": 1.0,
             "reward_margin": 0.3}]
    s = summarize(rows)
    assert s["choice_accuracy"] == pytest.approx(2 / 3)
    assert s["choice_accuracy_macro"] == pytest.approx((1.0 + 0.0) / 2)
    assert s["reward_accuracy"] == pytest.approx(2 / 3)
    assert s["reward_margin"] == pytest.approx(0.4 / 3)
    base = EvalResult("base", [{**r, "reward_correct": None} for r in rows], 1.0,
                      summarize([{k: v for k, v in r.items() if k != "reward_correct"}
                                 for r in rows]))
    trained = EvalResult("fspo", rows, 2.0, s)
    out = write_report(tmp_path / "rep", [base, trained], config={"protocol": "test"},
                       cost={"train_wall_s": 3}, paired_against="base")
    for name in ("summary.csv", "summary.md", "paired.csv", "accuracy.png", "config.json",
                 "cost.json", "README.md", "predictions.jsonl"):
        assert (out / name).exists(), name
    assert json.loads((out / "cost.json").read_text())["train_wall_s"] == 3
    assert "fspo" in (out / "summary.md").read_text()


def test_leave_one_out_episodes_use_only_the_users_other_pairs():
    from personalign.fspo.train.evaluate import leave_one_out_episodes
    from personalign.runtime.data.records import PreferencePair

    pairs = [PreferencePair(u, f"{u}-q{i}", f"{u}-y{i}", f"{u}-n{i}")
             for u in ("a", "b") for i in range(3)]
    eps = leave_one_out_episodes(pairs, n_shots=4)
    assert len(eps) == 6
    for e in eps:
        q = final_question(e["prompt"])
        assert e["n_shots"] == 2 and q.startswith(e["user_id"])
        assert e["prompt"].count(q) == 1  # the query is never among its own shots
        other = "b" if e["user_id"] == "a" else "a"
        assert f"{other}-q" not in e["prompt"]
