"""Property tests for every loader: any file gives either a valid result or a DataError that
names the file and the line (and the field, unless the whole line is unreadable); never
another exception.

Inputs are mostly near-valid records with some fields replaced by arbitrary JSON, dropped or
duplicated across records, plus arbitrary text and bytes, so both the checks and the accepted
results are exercised. Those properties alone would pass a loader that rejected every file with
a well-formed DataError, so the valid-file properties at the end write only files valid by the
format's rules and require each to load to exactly the records written.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personalign.bench.protocols import is_substantive, load_globalopinionqa_users
from personalign.runtime.data.globalopinionqa import COLUMNS, load_globalopinionqa
from personalign.runtime.data.lamp import LAMP2_TAGS, load_lamp
from personalign.runtime.data.opinionqa import REFUSED, load_opinionqa
from personalign.runtime.data.preferences import load_preferences
from personalign.runtime.errors import DataError

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
# Reasons about a whole line (or file) that is unreadable, where no single field is to blame.
WHOLE_LINE = ("malformed", "not valid UTF-8", "no ", "each line must be", "row has more cells",
              "expected an object with", "expected a JSON list")
MISSING = object()

ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8)


def often(usual: st.SearchStrategy, *rare: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` about nine times in ten, else one of ``rare``."""
    # (st.one_of picks branches evenly however often one is listed.)
    return st.sampled_from(range(10)).flatmap(lambda n: st.one_of(*rare) if n == 9 else usual)


def field(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a valid value; sometimes any JSON value or no key at all."""
    return often(valid, ANY_JSON, st.just(MISSING))


def record(**fields: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries(fields).map(
        lambda d: {k: v for k, v in d.items() if v is not MISSING})


def file_bytes(structured: st.SearchStrategy) -> st.SearchStrategy:
    """The structured text (sometimes after a byte-order mark), or any text, or any bytes."""
    text = often(structured, st.text(max_size=40))
    encoded = st.tuples(st.sampled_from(["", "\ufeff"]), text).map(
        lambda t: (t[0] + t[1]).encode("utf-8"))
    return often(encoded, st.binary(max_size=40))


def load_or_error(load, data: bytes, path: Path, *other_files: Path):
    """``load(path)`` once ``data`` is written there, or None after checking that its
    DataError names a file (``path`` or ``other_files``) and a line."""
    path.write_bytes(data)
    try:
        return load(path)
    except DataError as e:
        assert e.path is not None and Path(e.path) in (path, *other_files), str(e)
        assert e.line is not None, str(e)
        # a field, unless the whole line is what is wrong (not JSON, not an object)
        names_a_field = e.field is not None
        assert names_a_field or e.reason.startswith(WHOLE_LINE), str(e)
        return None


def assert_valid_opinion(o, *, refused_dropped: bool = False) -> None:
    assert len(o.options) >= 2 and all(isinstance(t, str) and t.strip() for t in o.options)
    assert len({t.strip() for t in o.options}) == len(o.options)
    assert 0 <= o.answer < len(o.options)
    if refused_dropped:
        assert REFUSED not in o.options
    for values in (o.ordinal, o.distribution):
        assert values is None or len(values) == len(o.options)


# ----------------------------------------------------------------------------- OpinionQA
OPTION = often(st.sampled_from(["Yes", "No", "Maybe", REFUSED]),
               st.sampled_from([" Yes", "", 2]), st.text(max_size=4))
OPTIONS = often(st.lists(st.sampled_from(["Yes", "No", "Maybe", REFUSED]), min_size=2,
                         max_size=4, unique=True), st.lists(OPTION, max_size=5))
OPINION = record(
    qid=field(st.sampled_from(["Q1", "Q2", "Q3"])),
    question=field(st.sampled_from(["Is it?", "Why?", " "])),
    options=field(OPTIONS),
    answer=field(st.integers(-1, 5)),
    ordinal=field(st.none() | st.lists(st.none() | st.floats() | st.integers(), max_size=5)),
    topic=field(st.none() | st.text(max_size=4)),
)
OQA_USER = record(
    user_id=field(st.sampled_from(["u1", "u2", "u3"])),
    profile=field(st.dictionaries(st.sampled_from(["AGE", "SEX"]), st.text(max_size=4))),
    opinions=field(st.lists(often(OPINION, ANY_JSON), max_size=3)),
    description=field(st.none() | st.text(max_size=6)),
)


def jsonl(rows: st.SearchStrategy) -> st.SearchStrategy:
    line = often(rows.map(json.dumps), st.sampled_from(["", "  ", "{", "[]", "3"]))
    return st.lists(line, min_size=1, max_size=4).map("\n".join)


@FAST
@given(data=file_bytes(jsonl(often(OQA_USER, ANY_JSON))))
def test_opinionqa_any_file(tmp_path, data):
    users = load_or_error(load_opinionqa, data, tmp_path / "users.jsonl")
    for user in users or []:
        assert isinstance(user.user_id, str) and user.user_id.strip()
        assert user.description is None or isinstance(user.description, str)
        qids = [o.qid for o in user.opinions if o.qid is not None]
        assert len(qids) == len(set(qids))
        for o in user.opinions:
            assert_valid_opinion(o, refused_dropped=True)


# ----------------------------------------------------------------------------- GlobalOpinionQA
SHARES = st.lists(often(st.floats(0, 1), st.none(), st.floats(), st.integers(-1, 3)),
                  min_size=2, max_size=4)
SELECTIONS = st.dictionaries(often(st.sampled_from(["Aland", "Borduria"]), st.just(" "),
                                   st.integers()), SHARES, max_size=3).map(repr)
CELL_OPTIONS = often(OPTIONS, st.lists(often(OPTION, st.floats()), max_size=4)).map(repr)
GOQA_ROW = st.fixed_dictionaries({
    "question": often(st.text(st.characters(codec="ascii"), min_size=1, max_size=8),
                      st.just("")),
    "selections": often(SELECTIONS, SELECTIONS.map("defaultdict(<class 'list'>, {})".format),
                        st.text(max_size=10)),
    "options": often(CELL_OPTIONS, st.text(max_size=10)),
    "source": st.sampled_from(["GAS", "WVS", ""]),
})


def goqa_csv(rows: list[dict], header: list[str], extra_cells: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[c] for c in COLUMNS] + (["extra"] if extra_cells else []))
    return out.getvalue()


GOQA_FILE = st.builds(goqa_csv, st.lists(GOQA_ROW, min_size=1, max_size=4),
                      often(st.just(list(COLUMNS)), st.just(list(COLUMNS)[:3])),
                      often(st.just(False), st.just(True)))


@FAST
@given(data=file_bytes(GOQA_FILE))
def test_globalopinionqa_any_file(tmp_path, data):
    users = load_or_error(load_globalopinionqa, data, tmp_path / "goqa.csv")
    for user in users or []:
        assert user.profile == {"COUNTRY": user.user_id}
        for o in user.opinions:
            assert_valid_opinion(o)
            assert o.distribution[o.answer] == max(o.distribution)


# The globalopinionqa-individual protocol's reading: "Don't know" and WVS missing codes among
# the options, dropped and the shares renormalized, or the question left out.
PROTOCOL_OPTIONS = st.lists(st.sampled_from(["Yes", "No", "Maybe", "Don't know", "No answer",
                                             "Missing; Not available", "DK/Refused"]),
                            min_size=2, max_size=4, unique=True).map(repr)
PROTOCOL_FILE = st.builds(goqa_csv, st.lists(GOQA_ROW.flatmap(
    lambda row: st.builds(lambda o: {**row, "options": o}, often(PROTOCOL_OPTIONS,
                                                                st.just(row["options"])))),
    min_size=1, max_size=4), st.just(list(COLUMNS)), st.just(False))


@FAST
@given(data=file_bytes(PROTOCOL_FILE))
def test_globalopinionqa_protocol_any_file(tmp_path, data):
    users = load_or_error(load_globalopinionqa_users, data, tmp_path / "goqa.csv")
    for user in users or []:
        for o in user.opinions:
            assert_valid_opinion(o)
            assert all(is_substantive(x) for x in o.options)
            assert abs(sum(o.distribution) - 1.0) < 1e-9
            assert o.distribution[o.answer] == max(o.distribution)


# ----------------------------------------------------------------------------- LaMP
LABEL = st.sampled_from(["sci-fi", "comedy", "musical", "3", 4, 4.0, "", "A title"])
PROFILE_ITEM = record(**{k: field(LABEL | st.text(max_size=6))
                         for k in ("description", "tag", "text", "score", "abstract", "title")})
LAMP_INPUT = st.sampled_from([f"tags: [{', '.join(LAMP2_TAGS)}] description: a film",
                              "tags: [comedy] description: one tag",
                              "tags: [comedy, comedy] description: twice",
                              "Review: fine", ""])
LAMP_ID = st.sampled_from(["1", "2", 1, 2.5])
QUESTIONS = st.lists(record(id=field(LAMP_ID), input=field(LAMP_INPUT),
                            profile=field(st.lists(often(PROFILE_ITEM, ANY_JSON), max_size=2))),
                     min_size=1, max_size=3)
OUTPUTS = record(task=field(st.sampled_from(["LaMP_2", "LaMP-3", "lamp5", "LaMP_9"])),
                 golds=field(st.lists(record(id=field(LAMP_ID), output=field(LABEL)),
                                      min_size=1, max_size=3)))


def json_text(doc: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(doc, st.sampled_from([None, 1])).map(lambda t: json.dumps(t[0],
                                                                               indent=t[1]))


@FAST
@given(questions=file_bytes(json_text(often(QUESTIONS, ANY_JSON))),
       outputs=file_bytes(json_text(often(OUTPUTS, ANY_JSON))))
def test_lamp_any_files(tmp_path, questions, outputs):
    opath = tmp_path / "x_outputs.json"
    opath.write_bytes(outputs)
    examples = load_or_error(lambda qpath: load_lamp(qpath, opath), questions,
                             tmp_path / "x_questions.json", opath)
    for e in examples or []:
        assert isinstance(e.user_id, str) and isinstance(e.input, str) and e.gold.strip()
        if e.is_choice:
            user, target = e.to_user(), e.target_opinion()
            for o in (*user.opinions, target):
                assert_valid_opinion(o)


# ----------------------------------------------------------------------------- preferences
TEXT = often(st.sampled_from(["p", "a", "b", "c"]), st.sampled_from([" ", ""]),
             st.text(max_size=4))
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.just("assistant"), "content": TEXT}),
                    max_size=2)
PAIR = record(prompt=field(TEXT), chosen=field(TEXT | MESSAGES), rejected=field(TEXT | MESSAGES),
              user_id=field(st.sampled_from(["u1", "u2", 3])),
              user_description=field(st.none() | TEXT), id=field(st.sampled_from([1, 2, "1"])),
              meta=field(st.none() | st.just('{"source": "x"}') | st.just("[1]")))


@FAST
@given(data=file_bytes(jsonl(often(PAIR, ANY_JSON))))
def test_preferences_any_file(tmp_path, data):
    pairs = load_or_error(load_preferences, data, tmp_path / "pairs.jsonl")
    for p in pairs or []:
        assert isinstance(p.user_id, str) and isinstance(p.meta, dict)
        assert all(isinstance(t, str) and t.strip() for t in (p.prompt, p.chosen, p.rejected))
        assert p.chosen.strip() != p.rejected.strip()
        assert p.user_description is None or isinstance(p.user_description, str)


# ----------------------------------------------------------------------------- valid files
# The properties above accept a well-formed DataError for any file, so a loader that rejected
# everything would pass them. Here every file is valid by the formats' rules: it must load,
# to exactly the records written (drops and remappings the format defines included).
WORDS = st.lists(st.sampled_from(["bus", "tram", "bike", "car", "ferry", "walk", "naïve"]),
                 min_size=1, max_size=4).map(" ".join)
OPTION_TEXTS = st.lists(st.sampled_from(["Yes", "No", "Maybe", "Often", "Never", "2.0"]),
                        min_size=2, max_size=4, unique=True)


@st.composite
def valid_opinion(draw, qid):
    """(record as written, what it loads to: question, options, answer, qid, ordinal)."""
    question = draw(WORDS) + "?"
    options = draw(OPTION_TEXTS)
    answer = draw(st.integers(0, len(options) - 1))
    ordinal = draw(st.none() | st.lists(st.none() | st.integers(-3, 3).map(float),
                                        min_size=len(options), max_size=len(options)))
    written = {"question": question, "options": list(options), "answer": answer}
    if qid is not None:
        written["qid"] = qid
    if ordinal is not None:
        written["ordinal"] = list(ordinal)
    if draw(st.booleans()):  # a "Refused" option somewhere (never the answer): dropped
        at = draw(st.integers(0, len(options)))
        written["options"].insert(at, REFUSED)
        written["answer"] = answer + (answer >= at)
        if ordinal is not None:
            written["ordinal"].insert(at, None)
    want = (question, tuple(options), answer, qid,
            None if ordinal is None else tuple(ordinal))
    return written, want


@st.composite
def valid_opinionqa_file(draw):
    ids = draw(st.lists(st.sampled_from(["u1", "u2", "u3", "user 4"]), min_size=1,
                        max_size=3, unique=True))
    written, want = [], []
    for user_id in ids:
        n = draw(st.integers(1, 3))
        qids = draw(st.lists(st.sampled_from(["Q1", "Q2", "Q3"]) | st.none(), min_size=n,
                             max_size=n, unique_by=lambda q: q or object()))
        ops = [draw(valid_opinion(q)) for q in qids]
        profile = draw(st.dictionaries(st.sampled_from(["AGE", "SEX"]), WORDS, max_size=2))
        written.append({"user_id": user_id, "profile": profile,
                        "opinions": [w for w, _ in ops]})
        want.append((user_id, profile, [v for _, v in ops]))
    return "\n".join(json.dumps(r) for r in written).encode(), want


@FAST
@given(case=valid_opinionqa_file())
def test_opinionqa_valid_files_load_exactly(tmp_path, case):
    data, want = case
    path = tmp_path / "users.jsonl"
    path.write_bytes(data)
    users = load_opinionqa(path)
    got = [(u.user_id, u.profile, [(o.question, o.options, o.answer, o.qid, o.ordinal)
                                   for o in u.opinions]) for u in users]
    assert got == want


@st.composite
def valid_goqa_file(draw):
    """A CSV of distinct questions with every country's shares; each country's user has, per
    question with respondents, the majority option (the first of equal shares)."""
    n = draw(st.integers(1, 3))
    questions = draw(st.lists(WORDS.map(lambda w: w + "?"), min_size=n, max_size=n,
                              unique=True))
    rows, want = [], {}
    for question in questions:
        options = draw(OPTION_TEXTS)
        shares = draw(st.dictionaries(
            st.sampled_from(["Aland", "Borduria", "Syldavia"]),
            st.lists(st.integers(0, 4).map(lambda k: k / 4), min_size=len(options),
                     max_size=len(options)), min_size=1, max_size=3))
        wrapped = draw(st.booleans())
        selections = repr(shares)
        if wrapped:
            selections = f"defaultdict(<class 'list'>, {selections})"
        rows.append({"question": question, "selections": selections,
                     "options": repr(list(options)), "source": "GAS"})
        for country, values in shares.items():
            if sum(values) > 0:
                want.setdefault(country, []).append(
                    (question, tuple(options), values.index(max(values)), tuple(values)))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode(), want


@FAST
@given(case=valid_goqa_file())
def test_globalopinionqa_valid_files_load_exactly(tmp_path, case):
    data, want = case
    path = tmp_path / "goqa.csv"
    path.write_bytes(data)
    users = load_globalopinionqa(path)
    got = {u.user_id: [(o.question, o.options, o.answer, o.distribution) for o in u.opinions]
           for u in users}
    assert got == want
    assert [u.user_id for u in users] == list(want)  # first-seen order
    assert all(u.profile == {"COUNTRY": u.user_id} for u in users)


@st.composite
def valid_lamp3_files(draw):
    """LaMP-3 (ratings 1-5): questions and golds (in another order), ratings written as ints,
    strings or floats; each loads to its id, input, gold and profile with ratings as text."""
    ids = draw(st.lists(st.sampled_from(["101", "102", "103", 104]), min_size=1, max_size=3,
                        unique_by=str))
    rating = st.integers(1, 5).flatmap(lambda r: st.sampled_from([r, str(r), float(r)]))
    questions, golds, want = [], [], []
    for qid in ids:
        profile = draw(st.lists(st.fixed_dictionaries({"text": WORDS, "score": rating}),
                                max_size=3))
        gold = draw(rating)
        text = f"Review: {draw(WORDS)}"
        questions.append({"id": qid, "input": text, "profile": profile})
        golds.append({"id": qid, "output": gold})
        want.append((str(qid), text, str(int(float(gold))),
                     [(p["text"], str(int(float(p["score"])))) for p in profile]))
    golds = draw(st.permutations(golds))
    return (json.dumps(questions, indent=1).encode(),
            json.dumps({"task": "LaMP_3", "golds": golds}).encode(), want)


@FAST
@given(case=valid_lamp3_files())
def test_lamp_valid_files_load_exactly(tmp_path, case):
    questions, outputs, want = case
    qpath, opath = tmp_path / "x_questions.json", tmp_path / "x_outputs.json"
    qpath.write_bytes(questions)
    opath.write_bytes(outputs)
    examples = load_lamp(qpath, opath)
    got = [(e.user_id, e.input, e.gold, [(p["text"], p["score"]) for p in e.profile])
           for e in examples]
    assert got == want
    for e in examples:
        assert e.task == "LaMP-3" and e.options == ("1", "2", "3", "4", "5")
        assert e.target_opinion().answer == int(e.gold) - 1


@st.composite
def valid_pairs_file(draw):
    n = draw(st.integers(1, 4))
    written, want = [], []
    for i in range(n):
        chosen, rejected = draw(st.lists(WORDS, min_size=2, max_size=2, unique=True))
        row = {"prompt": f"{draw(WORDS)} {i}", "chosen": chosen, "rejected": rejected}
        user = draw(st.none() | st.sampled_from(["u1", "u2"]))
        if user is not None:
            row["user_id"] = user
        description = draw(st.none() | WORDS)
        if description is not None:
            row["user_description"] = description
        if draw(st.booleans()):  # conversational: the last message's text is the reply
            row["chosen"] = [{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": chosen}]
        meta = draw(st.none() | st.just({"source": "x"}))
        if meta is not None:
            row["meta"] = json.dumps(meta) if draw(st.booleans()) else meta
        written.append(row)
        want.append((user or "default", row["prompt"], chosen, rejected, description,
                     meta or {}))
    return "\n".join(json.dumps(r) for r in written).encode(), want


@FAST
@given(case=valid_pairs_file())
def test_preferences_valid_files_load_exactly(tmp_path, case):
    data, want = case
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(data)
    pairs = load_preferences(path)
    assert [(p.user_id, p.prompt, p.chosen, p.rejected, p.user_description, p.meta)
            for p in pairs] == want
