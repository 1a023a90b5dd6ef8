"""Fermi and FSPO reports joined on (user, question)."""

import json

import pytest
from typer.testing import CliRunner

from personalign.bench.compare import compare
from personalign.cli.main import app
from personalign.runtime.errors import DataError


def _write(folder, rows):
    folder.mkdir()
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _reports(tmp_path, fspo_qid=True):
    fermi, fspo = tmp_path / "fermi", tmp_path / "fspo"
    rows = []
    for u in ("u1", "u2"):
        for q in ("q1", "q2", "q3"):
            rows.append({"user_id": u, "qid": q, "method": "fermi", "correct": 1.0})
            rows.append({"user_id": u, "qid": q, "method": "vanilla",
                         "correct": float(q == "q1")})
    _write(fermi, rows)
    # FSPO answered two of the three questions; only those count for every method.
    _write(fspo, [{"method": "fspo", "user_id": u, "choice_correct": float(u == "u1"),
                   **({"qid": q} if fspo_qid else {})}
                  for u in ("u1", "u2") for q in ("q1", "q2")])
    return fermi, fspo


def test_compare_joins_on_user_and_question(tmp_path):
    fermi, fspo = _reports(tmp_path)
    result = compare(fermi, fspo, tmp_path / "out")
    acc = {r["method"]: r["accuracy"] for r in result["per_method"]}
    assert result["questions"] == 4 and result["users"] == 2
    assert acc == {"Fermi": 100.0, "Vanilla": 50.0, "FSPO eval: fspo": 50.0}
    diffs = {p["method"]: p["diff"] for p in result["paired"]}
    assert diffs == {"Vanilla": -50.0, "FSPO eval: fspo": -50.0}
    assert "Fermi vs FSPO" in (tmp_path / "out" / "README.md").read_text()


def test_rows_without_qid_are_an_error_naming_the_file(tmp_path):
    fermi, fspo = _reports(tmp_path, fspo_qid=False)
    with pytest.raises(DataError, match="predictions.jsonl:1: field 'qid'"):
        compare(fermi, fspo, tmp_path / "out")
    result = CliRunner().invoke(app, ["bench", "compare", "--fermi", str(fermi), "--fspo",
                                      str(fspo), "--out", str(tmp_path / "o2")])
    assert isinstance(result.exception, DataError)  # main() prints it and exits 2
    assert not (tmp_path / "o2").exists()
