"""run_demo (the main job's entry) with fakes, and the CLI's error paths."""

import os
import subprocess
import sys

from typer.testing import CliRunner

from personalign.bench.runner import run_demo
from personalign.cli.main import app
from personalign.runtime.data.sample import load_sample_users
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import BagEmbedder, keyword_task_llm, make_user, scripted_optimizer


def _models():
    return SharedModels.of(keyword_task_llm(), scripted_optimizer(), BagEmbedder())


def test_run_demo_with_users(tmp_path):
    users = [make_user("a", 32), make_user("b", 32)]
    res = run_demo(users, out=tmp_path / "demo", preset="tiny", models=_models(),
                   progress=False)
    assert len(res.records) == 2 and all(r["n_test"] == 12 for r in res.records)
    assert "| Fermi |" in res.summary["per_method_md"]


def test_run_demo_on_packaged_sample_users(tmp_path):
    res = run_demo(out=tmp_path / "demo", preset="tiny", methods=["vanilla", "fermi"],
                   models=_models(), progress=False)
    sample = load_sample_users()
    assert [r["user_id"] for r in res.records] == [u.user_id for u in sample]
    assert all(r["n_test"] == len(u.opinions) - 20 for r, u in zip(res.records, sample))


def _personalign(*args: str) -> subprocess.CompletedProcess:
    """The real entry point (``personalign.cli.main:main``, as the console script runs it)."""
    return subprocess.run([sys.executable, "-m", "personalign.cli.main", *args],
                          check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "80"})


def test_cli_errors(tmp_path):
    # A bad data path is one line on stderr naming it, exit status 2: no traceback, no output
    # folder (a crash would also exit non-zero, with a traceback).
    for data in (tmp_path / "none.jsonl", tmp_path):
        r = _personalign("bench", "opinionqa", "--data", str(data), "--out", str(tmp_path / "o"))
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and r.stdout == ""
        assert r.stderr.splitlines() == [f"error: {data}: not a data file"]
        assert not (tmp_path / "o").exists()
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "opinionqa", "--help"])
    assert r.exit_code == 0 and "--preset" in r.output
    for command in ("fit", "predict"):
        r = runner.invoke(app, [command, "--help"])
        assert r.exit_code == 0 and "--data" in r.output
