"""run_demo (the main job's entry) with fakes, and the CLI's error paths."""

from typer.testing import CliRunner

from personalign.bench.opinionqa import run_demo
from personalign.cli.main import app

from tests.fermi.conftest import BagEmbedder, keyword_task_llm, make_user, scripted_optimizer


def test_run_demo_with_users(tmp_path):
    users = [make_user("a", 32), make_user("b", 32)]
    res = run_demo(users, out=tmp_path / "demo", preset="tiny", task_llm=keyword_task_llm(),
                   optimizer_llm=scripted_optimizer(), embedder=BagEmbedder(), progress=False)
    assert len(res.records) == 2 and all(r["n_test"] == 12 for r in res.records)
    assert "| Fermi |" in res.markdown_table


def test_run_demo_on_packaged_sample_users(tmp_path):
    res = run_demo(out=tmp_path / "demo", preset="tiny", methods="vanilla,fermi",
                   task_llm=keyword_task_llm(), optimizer_llm=scripted_optimizer(),
                   embedder=BagEmbedder(), progress=False)
    assert len(res.records) >= 1


def test_cli_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "opinionqa", "--data", str(tmp_path / "none.jsonl"),
                            "--out", str(tmp_path / "o")])
    assert r.exit_code != 0
    r = runner.invoke(app, ["bench", "opinionqa", "--help"])
    assert r.exit_code == 0 and "--preset" in r.output
    r = runner.invoke(app, ["fermi", "--help"])
    assert r.exit_code == 0 and "fit" in r.output and "predict" in r.output
