"""Loaders: OpinionQA, GlobalOpinionQA CSV, LaMP JSON, preference pairs, the sample dataset.

Every loader is fed each kind of bad input (malformed JSON or literal, wrong encoding, missing
field, empty options, answer out of range, duplicate ids) and must raise a DataError that names
the file, the 1-based line and the field.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from personalign.runtime.data.globalopinionqa import load_globalopinionqa, parse_selections
from personalign.runtime.data.lamp import LAMP2_TAGS, load_lamp, lamp_users, parse_tags
from personalign.runtime.data.opinionqa import PROFILE_FIELDS, load_opinionqa
from personalign.runtime.data.preferences import load_preferences, save_preferences, to_dataset
from personalign.runtime.data.records import PreferencePair
from personalign.runtime.data.sample import load_sample_users, sample_users_path
from personalign.runtime.errors import DataError

DATA = Path(__file__).parent / "data"
SHARED_DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "opinionqa" / "dev.jsonl"


def raises_at(fn, *, path: Path | None = None, line: int | None = None,
              field: str | None = None, match: str | None = None) -> DataError:
    with pytest.raises(DataError) as info:
        fn()
    e = info.value
    if path is not None:
        assert Path(e.path).name == path.name, str(e)
    if line is not None:
        assert e.line == line, str(e)
    if field is not None:
        assert e.field is not None and field in e.field, str(e)
    if match is not None:
        assert match in str(e), str(e)
    return e


def write_latin1(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("latin-1"))
    return path


# ----------------------------------------------------------------------------- OpinionQA
def _oqa_user(uid="u1", **opinion):
    op = {"qid": "Q1", "question": "Is it?", "options": ["Yes", "No", "Refused"], "answer": 1,
          "ordinal": [1.0, 2.0, None]}
    op.update(opinion)
    return {"user_id": uid, "profile": {"AGE": "30-49"}, "opinions": [op]}


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def test_opinionqa_loads_and_drops_refused(tmp_path):
    users = load_opinionqa(_write_jsonl(tmp_path / "u.jsonl", [_oqa_user()]))
    assert users[0].opinions[0].options == ("Yes", "No")
    assert users[0].opinions[0].answer == 1


@pytest.mark.parametrize("rows,line,field", [
    ([_oqa_user(), '{"user_id": "u2", "opinions": [}'], 2, None),           # malformed JSON
    ([_oqa_user(), {"user_id": "u2"}], 2, "opinions"),                        # missing field
    ([_oqa_user(question=None)], 1, "opinions[0].question"),                  # missing field
    ([_oqa_user(options=[])], 1, "opinions[0].options"),                      # empty options
    ([_oqa_user(answer=3)], 1, "opinions[0].answer"),                         # out of range
    ([_oqa_user(), _oqa_user("u2"), _oqa_user("u1")], 3, "user_id"),          # duplicate id
])
def test_opinionqa_bad_input(tmp_path, rows, line, field):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    raises_at(lambda: load_opinionqa(path), path=path, line=line, field=field)


def test_opinionqa_wrong_encoding(tmp_path):
    text = json.dumps(_oqa_user()) + "\n" + json.dumps(_oqa_user("u2", question="Café?"),
                                                       ensure_ascii=False)
    path = write_latin1(tmp_path / "latin.jsonl", text)
    raises_at(lambda: load_opinionqa(path), path=path, line=2, match="UTF-8")


@pytest.mark.skipif(not SHARED_DEV.exists(), reason="shared OpinionQA dev data not present")
def test_opinionqa_real_dev_file():
    users = load_opinionqa(SHARED_DEV)
    assert len(users) == 82
    assert all(len(u.opinions) >= 39 for u in users)
    assert all("Refused" not in o.options for u in users for o in u.opinions)


# ----------------------------------------------------------------------------- sample data
def test_sample_dataset_is_packaged_and_consistent():
    path = sample_users_path()
    assert path.exists() and path.name == "sample_users.jsonl"
    users = load_sample_users()
    assert len(users) == 4
    for u in users:
        assert set(u.profile) == set(PROFILE_FIELDS)
        assert 28 <= len(u.opinions) <= 35
        assert u.description
        for o in u.opinions:
            assert 3 <= len(o.options) <= 5 and o.ordinal is not None
    by_id = {u.user_id: u for u in users}
    # Internally consistent views: the conservative retiree and the progressive student
    # disagree on most questions; the moderate parent sits between them more often than not.
    retiree, student = by_id["sample_rural_retiree"], by_id["sample_urban_student"]
    differ = sum(a.answer != b.answer for a, b in zip(retiree.opinions, student.opinions))
    assert differ >= 25
    parent = by_id["sample_suburban_parent"]
    between = sum(min(a.answer, b.answer) <= p.answer <= max(a.answer, b.answer)
                  for a, b, p in zip(retiree.opinions, student.opinions, parent.opinions))
    assert between >= 24


# ----------------------------------------------------------------------------- GlobalOpinionQA
def test_globalopinionqa_one_user_per_country_with_majority():
    users = {u.user_id: u for u in load_globalopinionqa(DATA / "globalopinionqa_small.csv")}
    assert set(users) == {"Aland", "Borduria", "Carpania"}
    aland = users["Aland"]
    assert [o.answer for o in aland.opinions] == [0, 0, 2]
    assert aland.opinions[0].distribution == (0.6, 0.3, 0.1)
    assert aland.opinions[2].distribution == (0.3, 0.3, 0.4, 0.0)  # nan share -> 0
    assert aland.opinions[1].question.startswith("How important")  # multi-line cell
    assert aland.opinions[2].qid == "goqa_5"  # the record starts on line 5 of the file
    assert users["Borduria"].opinions[1].answer == 1
    assert users["Carpania"].opinions[1].options[-1] == "Don't know/Refused"
    assert users["Aland"].profile == {"COUNTRY": "Aland"}


def test_parse_selections_formats():
    p = Path("x.csv")
    assert parse_selections("{'A': [0.5, 0.5]}", p, 2) == {"A": [0.5, 0.5]}
    wrapped = "defaultdict(<class 'list'>, {'B': [1, 0]})"
    assert parse_selections(wrapped, p, 2) == {"B": [1.0, 0.0]}
    # Code is never evaluated.
    raises_at(lambda: parse_selections("__import__('os').getcwd()", p, 2), line=2,
              field="selections")


def _goqa_csv(path: Path, rows: list[dict], header=("question", "selections", "options",
                                                    "source")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(header))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in header})
    return path


GOOD_ROW = {"question": "Q?", "selections": "{'A': [0.7, 0.3]}", "options": "['Yes', 'No']",
            "source": "GAS"}


@pytest.mark.parametrize("bad,field", [
    ({"selections": "{'A': [0.7, 0.3"}, "selections"),                # malformed literal
    ({"options": "['Yes', 'No'"}, "options"),                           # malformed literal
    ({"selections": ""}, "selections"),                                 # missing field
    ({"options": "[]"}, "options"),                                     # empty options
    ({"selections": "{'A': [0.2, 0.3, 0.5]}"}, "selections['A']"),      # answer out of range
    ({"question": "Q?"}, "question"),                                   # duplicate question
])
def test_globalopinionqa_bad_input(tmp_path, bad, field):
    path = _goqa_csv(tmp_path / "g.csv", [GOOD_ROW, {**GOOD_ROW, "question": "Other?", **bad}])
    raises_at(lambda: load_globalopinionqa(path), path=path, line=3, field=field)


def test_globalopinionqa_missing_column_and_encoding(tmp_path):
    path = _goqa_csv(tmp_path / "g.csv", [GOOD_ROW], header=("question", "options", "source"))
    raises_at(lambda: load_globalopinionqa(path), line=1, field="selections")
    src = (DATA / "globalopinionqa_small.csv").read_text(encoding="utf-8")
    latin = write_latin1(tmp_path / "latin.csv", src.replace("Sometimes", "Häufig"))
    raises_at(lambda: load_globalopinionqa(latin), path=latin, line=2, match="UTF-8")


# ----------------------------------------------------------------------------- LaMP
def test_lamp2_choice_task_and_conversion():
    examples = load_lamp(DATA / "lamp2_dev_questions.json")  # outputs found beside it
    assert [e.task for e in examples] == ["LaMP-2", "LaMP-2"]
    first = examples[0]
    assert first.options == LAMP2_TAGS and len(first.options) == 15
    assert first.gold == "sci-fi" and first.gold_index == 0
    assert first.query_text().startswith("A crew of miners")
    user, target = lamp_users(examples)[0]
    assert user.user_id == "2001" and len(user.opinions) == 3
    assert user.opinions[2].answer_text == "dystopia"
    assert target.answer_text == "sci-fi" and "crew of miners" in target.question


def test_lamp3_ratings_are_ordinal():
    examples = load_lamp(DATA / "lamp3_dev_questions.json", DATA / "lamp3_dev_outputs.json")
    assert examples[0].options == ("1", "2", "3", "4", "5")
    assert examples[0].gold == "2"
    user = examples[0].to_user()
    assert [o.answer_text for o in user.opinions] == ["5", "2"]  # "5" and 2 both accepted
    assert user.opinions[0].ordinal == (1.0, 2.0, 3.0, 4.0, 5.0)


def test_lamp5_generation_task():
    (example,) = load_lamp(DATA / "lamp5_dev_questions.json")
    assert example.task == "LaMP-5" and not example.is_choice
    assert example.gold.startswith("Personalizing")
    assert example.profile[0]["title"] == "Few-shot user modeling"
    with pytest.raises(ValueError):
        example.to_user()


def test_parse_tags():
    assert parse_tags("tags: [a, b c, d] description: x") == ("a", "b c", "d")
    assert parse_tags("no tags here") == ()


def _lamp_copy(tmp_path: Path, task: str) -> tuple[Path, Path]:
    q = shutil.copy(DATA / f"{task}_dev_questions.json", tmp_path / "x_questions.json")
    o = shutil.copy(DATA / f"{task}_dev_outputs.json", tmp_path / "x_outputs.json")
    return Path(q), Path(o)


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=1))


def test_lamp_malformed_json(tmp_path):
    q, o = _lamp_copy(tmp_path, "lamp2")
    text = q.read_text().splitlines()
    text[3] = text[3] + ","  # line 4 ends with ",," now
    q.write_text("\n".join(text))
    raises_at(lambda: load_lamp(q, o), path=q, line=4, match="malformed JSON")


def test_lamp_wrong_encoding(tmp_path):
    q, o = _lamp_copy(tmp_path, "lamp3")
    write_latin1(o, o.read_text().replace('"2"', '"2 é"'))
    raises_at(lambda: load_lamp(q, o), path=o, match="UTF-8")


def test_lamp_missing_field(tmp_path):
    q, o = _lamp_copy(tmp_path, "lamp2")
    _edit_json(q, lambda d: d[1].pop("profile"))
    raises_at(lambda: load_lamp(q, o), path=q, field="[1].profile")
    q, o = _lamp_copy(tmp_path, "lamp3")
    _edit_json(q, lambda d: d[0]["profile"][1].pop("score"))
    e = raises_at(lambda: load_lamp(q, o), path=q, field="[0].profile[1].score")
    assert e.line is not None and e.line > 1  # located near the record's "id"


def test_lamp_empty_options(tmp_path):
    q, o = _lamp_copy(tmp_path, "lamp2")
    _edit_json(q, lambda d: d[0].update(input="Which tag? tags: [] description: a film"))
    raises_at(lambda: load_lamp(q, o), path=q, field="[0].input", match="options is empty")


def test_lamp_answer_out_of_range(tmp_path):
    q, o = _lamp_copy(tmp_path, "lamp3")
    _edit_json(o, lambda d: d["golds"][1].update(output="7"))
    raises_at(lambda: load_lamp(q, o), path=o, field="output", match="out of range")
    q, o = _lamp_copy(tmp_path, "lamp2")
    _edit_json(q, lambda d: d[0]["profile"][0].update(tag="musical"))
    raises_at(lambda: load_lamp(q, o), path=q, field="[0].profile[0].tag")


def test_lamp_duplicate_ids(tmp_path):
    q, o = _lamp_copy(tmp_path, "lamp2")
    _edit_json(q, lambda d: d[1].update(id="2001"))
    raises_at(lambda: load_lamp(q, o), path=q, field="[1].id", match="duplicate")
    q, o = _lamp_copy(tmp_path, "lamp2")
    _edit_json(o, lambda d: d["golds"].append({"id": "2001", "output": "comedy"}))
    raises_at(lambda: load_lamp(q, o), path=o, field="golds[2].id", match="duplicate")


def test_lamp_unknown_task_and_missing_gold(tmp_path):
    q, o = _lamp_copy(tmp_path, "lamp2")
    _edit_json(o, lambda d: d.update(task="LaMP_9"))
    raises_at(lambda: load_lamp(q, o), path=o, field="task")
    q, o = _lamp_copy(tmp_path, "lamp2")
    _edit_json(o, lambda d: d["golds"].pop())
    # Named at the question whose id has no gold (the outputs file has no line for it).
    raises_at(lambda: load_lamp(q, o), path=q, line=23, field="[1].id", match="no gold output")


# ----------------------------------------------------------------------------- preferences
def test_preferences_jsonl():
    pairs = load_preferences(DATA / "preferences_small.jsonl")
    assert len(pairs) == 3
    assert pairs[0].user_id == "u1" and pairs[0].user_description == "Loves the outdoors."
    assert pairs[2].meta == {"source": "test"}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_preferences_round_trip_and_load_dataset(tmp_path, suffix):
    from datasets import load_dataset

    pairs = load_preferences(DATA / "preferences_small.jsonl")
    out = save_preferences(pairs, tmp_path / f"prefs{suffix}")
    assert load_preferences(out) == pairs
    ds = load_dataset("json" if suffix == ".jsonl" else "parquet", data_files=str(out),
                      split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 3 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert load_preferences(ds) == pairs


def test_preferences_saved_dataset_dir(tmp_path):
    pairs = load_preferences(DATA / "preferences_small.jsonl")
    to_dataset(pairs).save_to_disk(str(tmp_path / "saved"))
    assert load_preferences(tmp_path / "saved") == pairs


def test_preferences_conversational_columns(tmp_path):
    row = {"prompt": "Hi?", "chosen": [{"role": "user", "content": "Hi?"},
                                       {"role": "assistant", "content": "Hello!"}],
           "rejected": [{"role": "assistant", "content": "Go away."}]}
    pairs = load_preferences(_write_jsonl(tmp_path / "c.jsonl", [row]), default_user="anon")
    assert (pairs[0].chosen, pairs[0].rejected, pairs[0].user_id) == ("Hello!", "Go away.",
                                                                       "anon")


P = {"user_id": "u", "prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize("rows,line,field,match", [
    ([P, '{"prompt": "p", "chosen": '], 2, None, "malformed JSON"),
    ([P, {"prompt": "p2", "chosen": "a"}], 2, "rejected", "missing"),
    ([P, {**P, "prompt": "p2", "chosen": "  "}], 2, "chosen", "empty"),        # empty option
    ([P, {**P, "prompt": "p2", "rejected": "a"}], 2, "rejected", "same text"),  # no contrast
    ([P, {**P, "chosen": 3}], 2, "chosen", "expected str"),
    ([{**P, "id": 1}, {**P, "prompt": "p2", "id": 1}], 2, "id", "duplicate"),
    ([P, {**P}], 2, "prompt", "duplicate pair"),
])
def test_preferences_bad_jsonl(tmp_path, rows, line, field, match):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    raises_at(lambda: load_preferences(path), path=path, line=line, field=field, match=match)


def test_preferences_wrong_encoding_and_bad_parquet(tmp_path):
    path = write_latin1(tmp_path / "latin.jsonl", json.dumps({**P, "chosen": "é"},
                                                             ensure_ascii=False))
    raises_at(lambda: load_preferences(path), path=path, line=1, match="UTF-8")
    fake = tmp_path / "x.parquet"
    fake.write_text("not parquet")
    raises_at(lambda: load_preferences(fake), path=fake, match="parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "chosen": "a"}]), tmp_path / "m.parquet")
    raises_at(lambda: load_preferences(tmp_path / "m.parquet"), field="rejected")


def test_preferences_bad_dataset_object():
    from datasets import Dataset

    ds = Dataset.from_list([P, {**P, "prompt": "p2", "rejected": "a"}])
    raises_at(lambda: load_preferences(ds), line=2, field="rejected")
    raises_at(lambda: load_preferences(Dataset.from_list([{"prompt": "p"}])), field="chosen")


def test_preference_pair_meta_survives_parquet(tmp_path):
    pair = PreferencePair("u", "p", "a", "b", meta={"episode": 3, "tags": ["x"]})
    out = save_preferences([pair], tmp_path / "m.parquet")
    assert load_preferences(out)[0].meta == {"episode": 3, "tags": ["x"]}


# ----------------------------------------------------------------------------- CLI
def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "personalign.cli.main", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "COLUMNS": "200"})


def test_cli_data_validate_and_sample(tmp_path):
    sample = _cli("data", "sample")
    assert sample.returncode == 0 and Path(sample.stdout.strip()) == sample_users_path()
    ok = _cli("data", "validate", str(sample_users_path()))
    assert ok.returncode == 0 and "32 / 32 / 32" in ok.stdout and "valid" in ok.stdout
    lamp = _cli("data", "validate", str(DATA / "lamp3_dev_questions.json"))
    assert lamp.returncode == 0 and "LaMP-3" in lamp.stdout
    bad = _write_jsonl(tmp_path / "bad.jsonl", [_oqa_user(), _oqa_user("u2", answer=7)])
    out = _cli("data", "validate", str(bad), "--format", "opinionqa")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "bad.jsonl:2" in out.stderr and "opinions[0].answer" in out.stderr
