"""Preference-episode evaluation without a real model: prompt modes, metrics rows, report."""

import math

import pytest

from personalign.bench.preferences import _rows
from personalign.bench.report import write_report
from personalign.fspo.data.episodes import (
    final_question, leave_one_out_episodes, transform_prompt, zero_shot_records,
)
from personalign.fspo.data.serialization import Shot, serialize_prompt
from personalign.runtime.data.records import PreferencePair
from personalign.runtime.errors import ConfigError, DataError

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
    with pytest.raises(ConfigError):
        transform_prompt(rec, "sideways")
    assert zero_shot_records([rec])[0]["n_shots"] == 0


def test_leave_one_out_episodes_use_only_the_users_other_pairs():
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


def _record(user, qid, answer):
    return {"user_id": user, "prompt": PROMPT, "chosen": "c", "rejected": "r",
            "meta": {"query_meta": {"options": ["Cats", "Dogs", "Both"], "answer": answer,
                                    "qid": qid}}}


def test_rows_compare_completions_and_read_the_choice():
    recs = [_record("a", "q1", 0), _record("a", "q2", 2)]
    log = math.log
    # [chosen, rejected, option 0, option 1, option 2]
    policy = [[log(.5), log(.1), log(.2), log(.1), log(.1)],
              [log(.1), log(.3), log(.1), log(.1), log(.4)]]
    reference = [[log(.2), log(.2), log(.2), log(.2), log(.2)],
                 [log(.1), log(.1), log(.2), log(.2), log(.4)]]
    rows = _rows("fspo", recs, policy, reference, "opinionqa-preferences", beta=0.1)
    assert [r["logp_correct"] for r in rows] == [1.0, 0.0]
    assert [r["choice"] for r in rows] == [0, 2] and [r["correct"] for r in rows] == [1.0, 1.0]
    assert [r["reward_correct"] for r in rows] == [1.0, 0.0]
    assert rows[0]["reward_margin"] == pytest.approx(0.1 * log(5), rel=1e-5)
    assert [r["qid"] for r in rows] == ["q1", "q2"]
    no_ref = _rows("base", recs, policy, None, "opinionqa-preferences", beta=0.1)
    assert "reward_correct" not in no_ref[0]
    synthetic = _rows("fspo", [{"user_id": "s", "prompt": PROMPT, "chosen": "c",
                                "rejected": "r"}], [[log(.6), log(.4)]], None, "fspo-synthetic",
                      beta=0.1)
    assert synthetic[0]["logp_correct"] == 1.0 and "correct" not in synthetic[0]


def test_report_of_preference_rows_is_macro_over_users(tmp_path):
    rows = []
    for user, corrects in (("a", [1.0, 1.0, 0.0, 1.0]), ("b", [0.0, 0.0])):
        for i, c in enumerate(corrects):
            rows.append({"user_id": user, "qid": f"q{i}", "method": "fspo", "logp_correct": c})
            rows.append({"user_id": user, "qid": f"q{i}", "method": "base",
                         "logp_correct": 1.0 - c})
    records = [{"user_id": u, "n_test": n, "rows": [r for r in rows if r["user_id"] == u],
                "fits": {}, "usage": {}, "seconds": {}, "wall_s": 0.0}
               for u, n in (("a", 4), ("b", 2))]
    meta = {"protocol": "fspo-synthetic", "data": "x", "seed": 0,
            "methods": [{"spec": "base", "label": "base"}, {"spec": "fspo", "label": "fspo"}]}
    summary = write_report(tmp_path, records, meta)
    fspo = next(r for r in summary["per_method"] if r["method"] == "fspo")
    assert fspo["logp_accuracy"] == pytest.approx((0.75 + 0.0) / 2)
    assert "accuracy" not in fspo  # no choices in these episodes
    assert summary["paired"][0]["diff"] == pytest.approx((0.75 - 0.0) / 2 - (0.25 + 1.0) / 2)
    readme = (tmp_path / "README.md").read_text()
    assert "Log-prob accuracy" in readme
    assert "most frequent letter" not in readme  # the users gave no lettered answers
    assert (tmp_path / "accuracy.png").exists()
