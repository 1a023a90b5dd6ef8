"""Bad input as a new user would give it, through the command line: every case ends with one
line naming the file (and the line and field where there is one), exit code 2, no traceback
and nothing written (issue 14, "Inputs that never crash")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personalign.cli.main import main

DATA = Path(__file__).parent / "data"
BOM = "\ufeff"
OPINION = {"qid": "Q1", "question": "Is it?", "options": ["Yes", "No", "Refused"], "answer": 1,
           "ordinal": [1.0, 2.0, None]}


def run_cli(*args: str | Path) -> tuple[int, str]:
    """(exit code, stdout and stderr) of the ``personalign`` entry point, run in-process."""
    with CliRunner().isolation() as (_, _, output):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        return code, output.getvalue().decode()


def assert_one_line_error(code: int, output: str, *where: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output
    for text in where:
        assert text in output, output


def user_line(user_id: str = "u1", **opinion) -> str:
    return json.dumps({"user_id": user_id, "opinions": [{**OPINION, **opinion}]})


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- OpinionQA
# Each bad user is on line 2, after a valid one.
BAD_USERS = {
    "refused answer": (user_line("u2", answer=2), "opinions[0].answer", "Refused"),
    "ordinal a number": (user_line("u2", ordinal=3), "opinions[0].ordinal", "expected a list"),
    "ordinal NaN": (user_line("u2", ordinal=[1.0, float("nan"), None]),
                    "opinions[0].ordinal[1]", "not a finite number"),
    "ordinal a string": (user_line("u2", ordinal=[1.0, "2", None]), "opinions[0].ordinal[1]",
                         "not a finite number"),
    "opinion a string": ('{"user_id": "u2", "opinions": ["Is it?"]}', "opinions[0]",
                         "expected an object, got str"),
    "opinion a number": ('{"user_id": "u2", "opinions": [3]}', "opinions[0]",
                         "expected an object, got int"),
    "opinion a list": ('{"user_id": "u2", "opinions": [["Is it?", ["Yes", "No"], 1]]}',
                       "opinions[0]", "expected an object, got list"),
    "one option": (user_line("u2", options=["Yes"], answer=0, ordinal=None),
                   "opinions[0].options", "at least two"),
    "one option besides Refused": (user_line("u2", options=["Yes", "Refused"], answer=0,
                                             ordinal=None), "opinions[0].options", "at least two"),
    "duplicate option texts": (user_line("u2", options=["Yes", "Yes ", "Refused"]),
                               "opinions[0].options[1]", "duplicate option"),
    "option not a string": (user_line("u2", options=["Yes", 2, "Refused"]),
                            "opinions[0].options[1]", "expected str"),
    "duplicate qid": (json.dumps({"user_id": "u2", "opinions": [
        OPINION, {**OPINION, "question": "Really?"}]}), "opinions[1].qid", "duplicate qid"),
    "qid not a string": (user_line("u2", qid=7), "opinions[0].qid", "expected str"),
}


@pytest.mark.parametrize("case", list(BAD_USERS))
def test_opinionqa_bad_user_is_one_line_with_line_and_field(tmp_path, case):
    line, field, reason = BAD_USERS[case]
    path = write(tmp_path / "bad.jsonl", user_line() + "\n" + line + "\n")
    code, output = run_cli("data", "validate", path)
    assert_one_line_error(code, output, "bad.jsonl:2", f"field '{field}'", reason)


@pytest.mark.parametrize("case,line,reason", [
    ("deeply nested", '{"user_id": "u2", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "nested too deeply"),
    ("huge integer", '{"user_id": "u2", "opinions": [], "n": ' + "9" * 5000 + "}",
     "malformed JSON"),
])
def test_opinionqa_unparsable_line(tmp_path, case, line, reason):
    path = write(tmp_path / "bad.jsonl", user_line() + "\n" + line + "\n")
    code, output = run_cli("data", "validate", path, "--format", "opinionqa")
    assert_one_line_error(code, output, "bad.jsonl:2", reason)


def test_opinionqa_line_separators_inside_strings_are_not_line_breaks(tmp_path):
    path = write(tmp_path / "ok.jsonl", user_line(question="Is it\u2028so\x85?") + "\n"
                 + user_line("u2") + "\n")
    code, output = run_cli("data", "validate", path)
    assert code == 0 and "valid" in output, output


# ----------------------------------------------------------------------------- empty files
@pytest.mark.parametrize("text", ["", " \n\n  \t\n"], ids=["empty", "whitespace"])
@pytest.mark.parametrize("name,fmt", [("e.jsonl", "opinionqa"), ("e.jsonl", "preferences"),
                                      ("e.csv", "globalopinionqa")])
def test_empty_file_in_data_validate(tmp_path, text, name, fmt):
    path = write(tmp_path / name, text)
    code, output = run_cli("data", "validate", path, "--format", fmt)
    assert_one_line_error(code, output, f"{name}:1")


@pytest.mark.parametrize("text", ["", " \n\n  \t\n"], ids=["empty", "whitespace"])
def test_empty_file_in_bench_writes_nothing(tmp_path, text):
    path = write(tmp_path / "e.jsonl", text)
    code, output = run_cli("bench", "opinionqa", "--data", path, "--out", tmp_path / "out")
    assert_one_line_error(code, output, "e.jsonl:1", "no users")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case,text,where", [
    ("empty", "", "g.csv:1: no questions"),
    ("whitespace", " \n\t\n", "g.csv:1: no questions"),
    ("bad row", None, "g.csv:3"),
])
def test_bench_globalopinionqa_invalid_data_writes_nothing(tmp_path, case, text, where):
    if text is None:  # a valid question, then one with one share for two options
        rows = (DATA / "globalopinionqa_small.csv").read_text(encoding="utf-8").splitlines()
        text = "\n".join(rows[:2] + ['"Q?","{\'A\': [1.0]}","[\'Yes\', \'No\']",GAS']) + "\n"
    path = write(tmp_path / "g.csv", text)
    code, output = run_cli("bench", "globalopinionqa", "--data", path, "--out", tmp_path / "out")
    assert_one_line_error(code, output, where)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- folders as data
@pytest.mark.parametrize("command", [
    ["bench", "opinionqa", "--out", "{tmp}/out"],
    ["bench", "globalopinionqa", "--out", "{tmp}/out"],
    ["fit", "--method", "fermi", "--user", "u1", "--out", "{tmp}/out/user.json"],
    ["data", "validate", "--format", "opinionqa"],
])
def test_folder_as_data(tmp_path, command):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    args = [a.format(tmp=tmp_path) for a in command]
    args += [str(folder)] if args[0] == "data" else ["--data", str(folder)]
    code, output = run_cli(*args)
    assert_one_line_error(code, output, "a_folder")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- fit --user
def test_fit_for_one_user_checks_every_line(tmp_path):
    path = write(tmp_path / "d.jsonl", user_line("u1") + "\n" + user_line("u2", answer=9) + "\n")
    out = tmp_path / "user.json"
    code, output = run_cli("fit", "--method", "fermi", "--data", path, "--user", "u1",
                           "--out", out)
    assert_one_line_error(code, output, "d.jsonl:2", "opinions[0].answer")
    assert not out.exists()


def test_bench_bad_line_writes_nothing(tmp_path):
    path = write(tmp_path / "d.jsonl", user_line("u1") + "\n" + user_line("u2", answer=2) + "\n")
    code, output = run_cli("bench", "opinionqa", "--data", path, "--out", tmp_path / "out")
    assert_one_line_error(code, output, "d.jsonl:2", "opinions[0].answer")
    assert not (tmp_path / "out").exists()


def test_error_text_is_not_markup_and_stays_on_one_line(tmp_path):
    deep = tmp_path.joinpath(*["a_long_folder_name"] * 8)
    deep.mkdir(parents=True)
    path = write(deep / "d.jsonl", user_line("[/bold]") + "\n" + user_line("[/bold]") + "\n")
    code, output = run_cli("data", "validate", path)
    assert_one_line_error(code, output, "d.jsonl:2", "'[/bold]'")


# ----------------------------------------------------------------------------- byte-order mark
def test_byte_order_mark_is_accepted_in_every_format(tmp_path):
    files = {"oqa.jsonl": user_line() + "\n",
             "prefs.jsonl": '{"prompt": "p", "chosen": "a", "rejected": "b"}\n',
             "g.csv": (DATA / "globalopinionqa_small.csv").read_text(encoding="utf-8")}
    for name, text in files.items():
        path = write(tmp_path / name, BOM + text)
        code, output = run_cli("data", "validate", path)
        assert code == 0 and "valid" in output, (name, output)
    for kind in ("questions", "outputs"):
        text = (DATA / f"lamp2_dev_{kind}.json").read_text(encoding="utf-8")
        write(tmp_path / f"x_{kind}.json", BOM + text)
    code, output = run_cli("data", "validate", tmp_path / "x_questions.json")
    assert code == 0 and "LaMP-2" in output, output
    prefs = run_cli("data", "validate", tmp_path / "prefs.jsonl")[1]
    assert "preferences" in prefs  # the BOM does not hide the keys that name the format


# ----------------------------------------------------------------------------- other formats
def test_globalopinionqa_oversized_cell_names_its_line(tmp_path):
    rows = (DATA / "globalopinionqa_small.csv").read_text(encoding="utf-8").split("\n", 1)
    huge = f'"{"x" * 200_000}","{{\'A\': [1, 0]}}","[\'Yes\', \'No\']",GAS\n'
    path = write(tmp_path / "g.csv", rows[0] + "\n" + huge + rows[1])
    code, output = run_cli("data", "validate", path)
    assert_one_line_error(code, output, "g.csv:2", "field larger than field limit")


def test_lamp_id_of_wrong_type_names_its_line(tmp_path):
    for kind in ("questions", "outputs"):
        shutil.copy(DATA / f"lamp2_dev_{kind}.json", tmp_path / f"x_{kind}.json")
    q = tmp_path / "x_questions.json"
    doc = json.loads(q.read_text())
    doc[1]["id"] = ["2002"]
    write(q, json.dumps(doc, indent=1))
    code, output = run_cli("data", "validate", q)
    assert_one_line_error(code, output, "x_questions.json:23", "field '[1].id'",
                          "expected str/int, got list")


@pytest.mark.parametrize("text, where", [("{not json", "not a readable summary.json"),
                                         ('{"format": 99}', "field format")])
def test_bench_pool_bad_summary_writes_nothing(tmp_path, text, where):
    path = write(tmp_path / "summary.json", text)
    code, output = run_cli("bench", "pool", path, "--out", tmp_path / "out")
    assert_one_line_error(code, output, str(path), where)
    assert not (tmp_path / "out").exists()
