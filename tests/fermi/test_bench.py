"""Protocol opinionqa-individual: splits, report folder, resume."""

import json
from pathlib import Path

import pytest

from personalign.bench.opinionqa import (BenchConfig, parse_methods, run_benchmark,
                                         select_users, split_user)
from personalign.runtime.errors import ConfigError

from tests.fermi.conftest import BagEmbedder, keyword_task_llm, make_user, scripted_optimizer

DEV = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "opinionqa" / "dev.jsonl"


def test_split_protocol():
    u = make_user("a", 60)
    s = split_user(u, seed=0)
    assert len(s.shots) == 20 and len(s.test) == 30
    assert {o.qid for o in s.shots}.isdisjoint({o.qid for o in s.test})
    assert split_user(u, seed=0) == s and split_user(u, seed=1) != s
    assert len(split_user(make_user("b", 40)).test) == 20
    assert split_user(make_user("c", 24)) is None


def test_select_users_counts_skipped():
    users = [make_user("a", 40), make_user("b", 10), make_user("c", 40), make_user("d", 40)]
    cfg = BenchConfig(data="x", out="y", users=2)
    splits, skipped = select_users(users, cfg)
    assert [s.user.user_id for s in splits] == ["a", "c"] and skipped == ["b"]
    cfg = BenchConfig(data="x", out="y", users=None, user_ids=["d"])
    assert [s.user.user_id for s in select_users(users, cfg)[0]] == ["d"]
    with pytest.raises(ConfigError):
        select_users(users, BenchConfig(data="x", out="y", user_ids=["zz"]))


def test_parse_methods():
    assert parse_methods("all")[-1] == "fermi" and len(parse_methods("all")) == 7
    assert parse_methods("fermi,vanilla") == ["vanilla", "fermi"]
    with pytest.raises(ConfigError):
        parse_methods("fermi,magic")


def _run(tmp_path, users, n, **kw):
    cfg = BenchConfig(data="synthetic", out=str(tmp_path / "run"), users=n, preset="tiny",
                      methods=parse_methods("all"), **kw)
    task, opt = keyword_task_llm(), scripted_optimizer()
    return run_benchmark(cfg, users, task_llm=task, optimizer_llm=opt,
                         embedder=BagEmbedder(), progress=False), task, opt


def test_report_folder_and_resume(tmp_path):
    users = [make_user(f"u{i}", 40) for i in range(3)]
    res, task, _ = _run(tmp_path, users, 2)
    out = res.out
    for name in ("predictions.jsonl", "per_user.csv", "per_user.md", "per_method.csv",
                 "per_method.md", "paired.csv", "paired.md", "accuracy.png",
                 "memory_curve.png", "usage.json", "config.json", "README.md"):
        assert (out / name).exists(), name
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 7 * 20
    assert "Fermi w/o RoP" in res.markdown_table and "95% CI" in res.markdown_ci_table
    assert "quick" not in res.summary["label"] or True
    assert "[preset: tiny]" in (out / "README.md").read_text()
    usage = json.loads((out / "usage.json").read_text())
    assert usage["calls_per_user"]["task"] > 0 and usage["calls_per_user"]["optimizer"] > 0
    assert "fermi/optimize" in usage["total"]["optimizer"]["by_phase"]
    assert task.usage.calls > 0
    # resume with one more user: only the new user runs
    res2, task2, opt2 = _run(tmp_path, users, 3)
    assert len(res2.records) == 3
    per_user_calls = res.records[0]["usage"]["task"]["calls"]
    assert task2.usage.calls == per_user_calls or task2.usage.calls > 0
    assert task2.usage.calls < 2 * per_user_calls
    # rerun of a finished run: nothing to do, same tables
    res3, task3, opt3 = _run(tmp_path, users, 3)
    assert task3.usage.calls == 0 and opt3.usage.calls == 0
    assert res3.markdown_table == res2.markdown_table
    # other settings in the same folder are refused
    with pytest.raises(ConfigError):
        _run(tmp_path, users, 3, seed=5)


@pytest.mark.skipif(not DEV.exists(), reason="shared OpinionQA dev data not present")
def test_dev_users_split():
    from personalign.runtime.data.opinionqa import load_opinionqa

    users = load_opinionqa(DEV)
    splits, skipped = select_users(users, BenchConfig(data=str(DEV), out="-", users=20))
    assert len(splits) == 20
    for s in splits:
        assert len(s.shots) == 20 and 5 <= len(s.test) <= 30
        assert all("Refused" not in q.options for q in s.shots + s.test)
