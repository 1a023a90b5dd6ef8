"""Released FSPO schemas and protocol opinionqa-preferences."""

import json
import random
from pathlib import Path

import pytest

from personalign.fspo.data.opinionqa_prefs import (
    load_opinionqa_preferences, opinionqa_preferences, rejected_option,
)
from personalign.fspo.data.released import load_elix, load_reviews, load_roleplay
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.errors import DataError

DEV = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "opinionqa" / "dev.jsonl"


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_elix_rows(tmp_path):
    rows = [{"prompt": "Why is the sky blue?", "response_x": "light scatters", "response_y":
             "Rayleigh scattering", "level_x": "a child", "level_y": "an expert",
             "scorer_level": "an expert", "label": 1},
            {"prompt": "P", "response_x": "X", "response_y": "Y", "level_x": "a child",
             "level_y": "an expert", "scorer_level": "a child", "label": 0}]
    pairs = load_elix(write(tmp_path / "elix.jsonl", rows))
    assert pairs[0].user_id == "an expert" and pairs[0].chosen == "Rayleigh scattering"
    assert pairs[0].user_description == "The user is an expert."
    assert pairs[0].rejected_description == "The user is a child."
    assert pairs[1].chosen == "X" and pairs[1].rejected == "Y"
    reviews = load_reviews(write(tmp_path / "r.jsonl", [dict(rows[1], scorer_level="positive")]))
    assert reviews[0].user_description == "This user prefers positive reviews."


def test_elix_bad_rows_name_file_line_field(tmp_path):
    row = {"prompt": "P", "response_x": "X", "response_y": "Y", "level_x": "a", "level_y": "b",
           "scorer_level": "a", "label": 0}
    bad = dict(row, label=2)
    with pytest.raises(DataError) as e:
        load_elix(write(tmp_path / "bad.jsonl", [row, bad]))
    assert e.value.line == 2 and e.value.field == "label" and "bad.jsonl" in str(e.value)
    missing = {k: v for k, v in row.items() if k != "response_y"}
    with pytest.raises(DataError) as e:
        load_elix(write(tmp_path / "m.jsonl", [missing]))
    assert e.value.field == "response_y" and e.value.line == 1


def test_roleplay_rows(tmp_path):
    rows = [{"x": "Q", "yw": "W", "yl": "L", "level": "7",
             "score_persona": {"persona_description": "A retired sailor."}}]
    pairs = load_roleplay(write(tmp_path / "rp.jsonl", rows))
    assert pairs[0].user_id == "7" and pairs[0].user_description == "A retired sailor."
    with pytest.raises(DataError) as e:
        load_roleplay(write(tmp_path / "rp2.jsonl", [dict(rows[0], score_persona={})]))
    assert e.value.field == "score_persona.persona_description"
    pq = tmp_path / "rp.parquet"
    import pandas as pd

    pd.DataFrame([{"x": "Q", "yw": "W", "yl": "L", "level": 3,
                   "score_persona.persona_description": "D"}]).to_parquet(pq)
    assert load_roleplay(pq)[0].user_id == "3"


def test_rejected_option_rules():
    rng = random.Random(0)
    op = Opinion("Q", ("A lot", "Some", "Not much", "None", "Don't know"), 1,
                 ordinal=(1.0, 2.0, 3.0, 4.0, None))
    assert rejected_option(op, rng) == (3, "ordinal-farthest")
    op = Opinion("Q", ("A lot", "Some", "Not much", "None"), 0, ordinal=(1.0, 2.0, 3.0, 4.0))
    assert rejected_option(op, rng) == (3, "ordinal-farthest")
    nominal = Opinion("Q", ("Red", "Blue", "Green"), 2)
    r, rule = rejected_option(nominal, rng)
    assert rule == "random-other" and r != 2
    no_ord_answer = Opinion("Q", ("Yes", "No", "Not sure"), 2, ordinal=(1.0, 2.0, None))
    assert rejected_option(no_ord_answer, rng)[1] == "random-other"


def test_opinionqa_preferences_split_and_skip():
    ops = tuple(Opinion(f"Q{i}?", ("Yes", "No"), i % 2, qid=f"q{i}") for i in range(40))
    users = [User("u1", {"AGE": "30-49"}, ops), User("short", {}, ops[:10])]
    res = opinionqa_preferences(users, seed=0)
    assert res.skipped_users == ["short"]
    assert len(res.pairs) == 40
    parts = [p.meta["part"] for p in res.pairs]
    assert parts.count("shots") == 20 and parts.count("test") == 20
    p = res.pairs[0]
    assert p.prompt.endswith("\nOptions: Yes | No") and p.user_description == "Age: 30-49"
    assert p.chosen != p.rejected and p.meta["rule"] == "random-other"


@pytest.mark.skipif(not DEV.exists(), reason="shared OpinionQA data not present")
def test_opinionqa_dev_file():
    res = load_opinionqa_preferences(DEV, seed=0)
    users = {p.user_id for p in res.pairs}
    assert len(users) + len(res.skipped_users) == 82
    assert all(p.chosen != p.rejected for p in res.pairs)
    assert {p.meta["rule"] for p in res.pairs} <= {"ordinal-farthest", "random-other"}
    assert all(p.meta["options"][p.meta["answer"]] == p.chosen for p in res.pairs)


@pytest.mark.skipif(not DEV.exists(), reason="shared OpinionQA data not present")
def test_same_split_as_opinionqa_individual():
    from personalign.bench.runner import split_user
    from personalign.runtime.data.opinionqa import load_opinionqa

    users = load_opinionqa(DEV)[:5]
    res = opinionqa_preferences(users, seed=3)
    for user in users:
        split = split_user(user, seed=3)
        mine = [p for p in res.pairs if p.user_id == user.user_id]
        assert [p.meta["qid"] for p in mine if p.meta["part"] == "shots"] == \
            [o.qid for o in split.train.opinions]
        assert [p.meta["qid"] for p in mine if p.meta["part"] == "test"] == \
            [o.qid for o in split.test]
