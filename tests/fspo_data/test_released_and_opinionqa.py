"""Released FSPO schemas and protocol opinionqa-preferences."""

import json
import random
from pathlib import Path

import pytest

from personalign.fspo.data.opinionqa_prefs import (
    DEFAULT_REJECTED, load_opinionqa_preferences, opinion_pairs, opinionqa_preferences,
    records_rejected_rule, rejected_options,
)
from personalign.fspo.data.released import load_elix, load_reviews, load_roleplay
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.errors import ConfigError, DataError

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
    assert rejected_options(op, "ordinal-farthest", rng) == [(3, "ordinal-farthest")]
    op = Opinion("Q", ("A lot", "Some", "Not much", "None"), 0, ordinal=(1.0, 2.0, 3.0, 4.0))
    assert rejected_options(op, "ordinal-farthest", rng) == [(3, "ordinal-farthest")]
    nominal = Opinion("Q", ("Red", "Blue", "Green"), 2)
    [(r, rule)] = rejected_options(nominal, "ordinal-farthest", rng)
    assert rule == "random-other" and r != 2
    no_ord_answer = Opinion("Q", ("Yes", "No", "Not sure"), 2, ordinal=(1.0, 2.0, None))
    assert rejected_options(no_ord_answer, "ordinal-farthest", rng)[0][1] == "random-other"
    # every-other: one pair per other option, the answer never among them
    assert rejected_options(op, "every-other", rng) == [(i, "every-other") for i in (1, 2, 3)]
    with pytest.raises(ConfigError, match="rejected-option rule"):
        rejected_options(op, "nearest", rng)


def test_uniform_other_is_seeded_per_user_and_question_and_uniform():
    options = tuple(f"o{i}" for i in range(5))
    ops = [Opinion(f"Q{i}?", options, 0, ordinal=(1.0, 2.0, 3.0, 4.0, 5.0), qid=f"q{i}")
           for i in range(400)]
    user = User("u1", {}, tuple(ops))
    first = [opinion_pairs(user, op, seed=0, rejected="uniform-other") for op in ops]
    assert all(len(ps) == 1 and ps[0].rejected != "o0" for ps in first)
    assert first == [opinion_pairs(user, op, seed=0, rejected="uniform-other") for op in ops]
    counts = {o: sum(ps[0].rejected == o for ps in first) for o in options[1:]}
    # not the ordinal-farthest option every time: about 100 each of the four others
    assert min(counts.values()) > 60 and counts["o4"] < 150
    other_seed = [opinion_pairs(user, op, seed=1, rejected="uniform-other")[0].rejected
                  for op in ops]
    assert other_seed != [ps[0].rejected for ps in first]
    meta = first[0][0].meta
    assert meta["rejected_rule"] == meta["rule"] == "uniform-other"


def test_every_other_pairs_and_the_rule_of_episode_records():
    op = Opinion("Q?", ("a", "b", "c", "d"), 1, qid="q")
    pairs = opinion_pairs(User("u", {}, (op,)), op, rejected="every-other")
    assert [p.rejected for p in pairs] == ["a", "c", "d"] and {p.chosen for p in pairs} == {"b"}
    assert all(p.meta["rejected_rule"] == "every-other" for p in pairs)
    record = {"meta": {"query_meta": pairs[0].meta}}
    assert records_rejected_rule([record]) == "every-other"
    older = {"meta": {"query_meta": {k: v for k, v in pairs[0].meta.items()
                                     if k != "rejected_rule"}}}
    assert records_rejected_rule([older]) == "ordinal-farthest"  # data before the choice
    assert records_rejected_rule([{"meta": {"query_meta": {}}}]) is None  # not OpinionQA


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
    assert p.chosen != p.rejected and p.meta["rule"] == DEFAULT_REJECTED == "uniform-other"


@pytest.mark.skipif(not DEV.exists(), reason="shared OpinionQA data not present")
def test_opinionqa_dev_file():
    res = load_opinionqa_preferences(DEV, seed=0)
    users = {p.user_id for p in res.pairs}
    assert len(users) + len(res.skipped_users) == 82
    assert all(p.chosen != p.rejected for p in res.pairs)
    assert {p.meta["rule"] for p in res.pairs} == {"uniform-other"}
    legacy = load_opinionqa_preferences(DEV, seed=0, rejected="ordinal-farthest")
    assert {p.meta["rule"] for p in legacy.pairs} == {"ordinal-farthest", "random-other"}
    every = load_opinionqa_preferences(DEV, seed=0, rejected="every-other")
    assert len(every.pairs) == sum(len(p.meta["options"]) - 1 for p in res.pairs)
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
