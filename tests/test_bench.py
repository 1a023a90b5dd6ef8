"""The benchmark: protocol splits, one report for every method, resume and input changes."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from personalign.bench.runner import BenchConfig, run_benchmark, select_users, split_user
from personalign.methods import MethodSettings, parse_specs
from personalign.runtime.errors import ConfigError
from personalign.runtime.models import machine
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import BagEmbedder, keyword_task_llm, make_user, scripted_optimizer

DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "opinionqa" / "dev.jsonl"


def test_split_protocol():
    u = make_user("a", 60)
    s = split_user(u, seed=0)
    assert len(s.train.opinions) == 20 and len(s.test) == 30
    assert {o.qid for o in s.train.opinions}.isdisjoint({o.qid for o in s.test})
    assert s.train.profile == u.profile
    assert split_user(u, seed=0) == s and split_user(u, seed=1) != s
    assert len(split_user(make_user("b", 40)).test) == 20
    assert split_user(make_user("c", 24)) is None


def test_select_users_counts_skipped():
    users = [make_user("a", 40), make_user("b", 10), make_user("c", 40), make_user("d", 40)]
    splits, skipped = select_users(users, BenchConfig(data="x", out="y", users=2))
    assert [s.user_id for s in splits] == ["a", "c"] and skipped == ["b"]
    cfg = BenchConfig(data="x", out="y", users=None, user_ids=["d"])
    assert [s.user_id for s in select_users(users, cfg)[0]] == ["d"]
    with pytest.raises(ConfigError):
        select_users(users, BenchConfig(data="x", out="y", user_ids=["zz"]))


def test_parse_specs():
    assert parse_specs("all")[-1] == "fermi" and len(parse_specs("all")) == 7
    assert parse_specs("fermi, vanilla,fspo:runs/x") == ["fermi", "vanilla", "fspo:runs/x"]
    for bad in ("fermi,magic", "vanilla,vanilla"):
        with pytest.raises(ConfigError):
            parse_specs(bad)


def _models():
    return SharedModels.of(keyword_task_llm(), scripted_optimizer(), BagEmbedder())


def _run(tmp_path, users, n, methods="all", **kw):
    cfg = BenchConfig(data="synthetic", out=str(tmp_path / "run"), users=n,
                      methods=parse_specs(methods),
                      settings=MethodSettings(preset="tiny", seed=kw.pop("seed", 0)), **kw)
    models = _models()
    return run_benchmark(cfg, users, models=models, progress=False), models


def test_one_report_for_every_method(tmp_path):
    users = [make_user(f"u{i}", 40) for i in range(3)]
    res, models = _run(tmp_path, users, 2)
    out = res.out
    for name in ("results.jsonl", "per_user.csv", "per_user.md", "per_method.csv",
                 "per_method.md", "paired.csv", "paired.md", "accuracy.png",
                 "memory_curve.png", "usage.json", "config.json", "README.md", "run.json"):
        assert (out / name).exists(), name
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 7 * 20
    # every method answered the same (user, question) pairs
    by_method = {}
    for r in rows:
        by_method.setdefault(r["method"], set()).add((r["user_id"], r["qid"]))
    assert len(by_method) == 7 and len({frozenset(v) for v in by_method.values()}) == 1
    assert all(len(r["logprobs"]) == r["n_options"] for r in rows)
    random_rows = [r for r in rows if r["method"] == "random"]
    assert all(r["correct"] == pytest.approx(1 / 3) for r in random_rows)
    assert "Fermi w/o RoP" in res.summary["per_method_md"]
    readme = (out / "README.md").read_text()
    assert "Fermi/OPRO preset: tiny" in readme
    assert "The users' own answers: most frequent letter " in readme
    usage = json.loads((out / "usage.json").read_text())
    assert usage["calls_per_user"]["fake-task"] > 0
    assert usage["calls_per_user"]["fake-opt"] > 0
    assert "fermi/optimize" in usage["total"]["fake-opt"]["by_phase"]
    assert "vanilla/predict" in usage["total"]["fake-task"]["by_phase"]
    # the keyword task model answers "Agree" to everything under the vanilla prompt
    vanilla = next(r for r in res.summary["per_method"] if r["method"] == "vanilla")
    assert vanilla["top_letter"] == "A" and vanilla["top_letter_share"] == 1.0


def test_resume_runs_only_missing_units(tmp_path):
    users = [make_user(f"u{i}", 40) for i in range(3)]
    res, models = _run(tmp_path, users, 2, methods="vanilla,profile")
    one_user = res.records[0]["usage"]["fake-task"]["calls"]
    # one more user: only that user runs
    res2, models2 = _run(tmp_path, users, 3, methods="vanilla,profile")
    assert len(res2.records) == 3 and models2.task_llm.usage.calls == one_user
    # one more method: only that method runs, on every user
    res3, models3 = _run(tmp_path, users, 3, methods="vanilla,profile,fewshot")
    assert models3.task_llm.usage.calls == 3 * 20
    assert set(models3.task_llm.usage.by_phase) == {"fewshot/predict"}
    # nothing left: no call, same table
    res4, models4 = _run(tmp_path, users, 3, methods="vanilla,profile,fewshot")
    assert models4.task_llm.usage.calls == 0
    assert res4.summary["per_method_md"] == res3.summary["per_method_md"]


def test_units_say_which_machine_computed_them(tmp_path):
    users = [make_user(f"u{i}", 40) for i in range(2)]
    res, _ = _run(tmp_path, users, 2, methods="vanilla")
    units = sorted((res.out / "units").glob("*.json"))
    assert len(units) == 2
    assert {json.loads(u.read_text())["record"]["machine"] for u in units} == {machine()}
    # a unit saved before machines were recorded still loads, and the report says so
    old = json.loads(units[0].read_text())
    del old["record"]["machine"]
    units[0].write_text(json.dumps(old))
    res2, models2 = _run(tmp_path, users, 2, methods="vanilla")
    assert models2.task_llm.usage.calls == 0
    readme = (res2.out / "README.md").read_text()
    note = next(line for line in readme.splitlines() if "Units computed on: " in line)
    assert f"{machine()} (1)" in note and "not recorded (1)" in note


def test_runs_split_by_users_or_methods_pool_into_one_report(tmp_path, capsys):
    """A run split over sessions, by users (--user-ids) or by methods, with a user left half
    done by a stopped session, pools from the parts' summary.json alone into the report one
    run on everything writes; summary.json holds numbers, no question, qid, option or
    profile."""
    from personalign.bench.report import pool
    from personalign.cli.main import main
    from personalign.runtime.budget import Limits

    users = [make_user(f"u{i}", 40) for i in range(3)]
    methods = "vanilla,profile,fewshot"  # (the scripted optimizer's replies run on over users)
    whole, _ = _run(tmp_path / "whole", users, 3, methods=methods)

    def summary(name, **kw):
        return _run(tmp_path / name, users, kw.pop("n", 3), **kw)[0].out / "summary.json"

    def pooled(name, *parts):
        main(["bench", "pool", *map(str, parts), "--out", str(tmp_path / name)])
        return tmp_path / name

    def same_tables(a, b):
        return all((a / f).read_text() == (b / f).read_text()
                   for f in ("per_user.md", "per_method.md", "paired.md"))

    by_users = [summary(f"users{i}", n=None, methods=methods, user_ids=ids)
                for i, ids in enumerate((["u0", "u1"], ["u2"]))]
    text = by_users[0].read_text()
    for leak in ("How do you feel", '"Q1"', "Agree", "Female"):
        assert leak not in text, leak
    out = pooled("pooled", *by_users)
    assert same_tables(out, whole.out) and not (out / "results.jsonl").exists()
    config = json.loads((out / "config.json").read_text())
    assert [p["users"] for p in config["pooled_from"]] == [["u0", "u1"], ["u2"]]
    assert "Pooled from" in (out / "README.md").read_text()
    assert [u["user_id"] for u in pool([out / "summary.json"])[0]] == ["u0", "u1", "u2"]

    # by methods; the session of the second part ends after u2's vanilla (its fewshot unit
    # lost), the report rewritten from the saved units: u2 is in summary.json alone
    profile = summary("a", methods="vanilla,profile")
    fewshot = summary("b", methods="vanilla,fewshot")
    next((tmp_path / "b" / "run" / "units").glob("u2_fewshot-*.json")).unlink()
    summary("b", methods="vanilla,fewshot", limits=Limits(run_calls=1))
    assert "| u2 |" not in (tmp_path / "b" / "run" / "per_user.md").read_text()
    assert [u.get("incomplete") for u in json.loads(fewshot.read_text())["users"]] == \
        [None, None, True]
    capsys.readouterr()
    assert "| u2 |" not in (pooled("two", profile, fewshot) / "per_user.md").read_text()
    printed = capsys.readouterr().out
    assert "2 users pooled from 2 runs (1 not yet complete)" in printed
    assert "not yet complete: u2 (--methods fewshot)" in printed
    # the next session runs u2's missing method (vanilla again: the same unit twice is one)
    rest = summary("c", n=None, methods="vanilla,fewshot", user_ids=["u2"])
    assert same_tables(pooled("three", profile, fewshot, rest), whole.out)

    # what does not pool: other models, one unit with other results
    data = json.loads(rest.read_text())
    data["meta"]["models"]["task"] = "another"
    (tmp_path / "other.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="field meta.models differs"):
        pool([profile, tmp_path / "other.json"])
    data = json.loads(rest.read_text())
    data["users"][0]["methods"]["vanilla"]["metrics"]["correct"] = 0.0
    (tmp_path / "changed.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="user u2, method vanilla: other results"):
        pool([profile, tmp_path / "changed.json"])


def test_changed_inputs_stop_or_recompute(tmp_path):
    users = [make_user(f"u{i}", 40) for i in range(2)]
    _run(tmp_path, users, 2, methods="vanilla")
    with pytest.raises(ConfigError, match="settings"):
        _run(tmp_path, users, 2, methods="vanilla", seed=5)
    # an edited opinion of u1: its unit is not silently reused
    edited = list(users[1].opinions)
    edited[0] = replace(edited[0], answer=(edited[0].answer + 1) % 3)
    users[1] = replace(users[1], opinions=tuple(edited))
    with pytest.raises(ConfigError, match="u1/vanilla"):
        _run(tmp_path, users, 2, methods="vanilla")
    res, models = _run(tmp_path, users, 2, methods="vanilla", force=True)
    assert models.task_llm.usage.calls == 20  # u1 only
    assert len(res.records) == 2


def test_a_changed_default_is_a_changed_input(tmp_path, monkeypatch):
    """The run's settings hold the overrides, not the defaults: a Fermi default changed in
    the code must still stop a resumed run (and recompute Fermi only, with force)."""
    from personalign.fermi import config as fermi_config

    users = [make_user(f"u{i}", 40) for i in range(2)]
    _run(tmp_path, users, 2, methods="vanilla,fewshot,fermi")
    tiny = {**fermi_config.PRESETS["tiny"], "final_pool": "last_k"}
    monkeypatch.setitem(fermi_config.PRESETS, "tiny", tiny)
    with pytest.raises(ConfigError, match="u0/fermi"):
        _run(tmp_path, users, 2, methods="vanilla,fewshot,fermi")
    res, models = _run(tmp_path, users, 2, methods="vanilla,fewshot,fermi", force=True)
    assert set(models.task_llm.usage.by_phase) >= {"fermi/predict"}
    assert not {p for p in models.task_llm.usage.by_phase if not p.startswith("fermi/")}
    assert {r["fits"]["fermi"]["pool_source"] for r in res.records} == {"last_k"}


@pytest.mark.skipif(not DEV.exists(), reason="shared OpinionQA dev data not present")
def test_dev_users_split():
    from personalign.runtime.data.opinionqa import load_opinionqa

    users = load_opinionqa(DEV)
    splits, skipped = select_users(users, BenchConfig(data=str(DEV), out="-", users=20))
    assert len(splits) == 20
    for s in splits:
        assert len(s.train.opinions) == 20 and 5 <= len(s.test) <= 30
        assert all("Refused" not in q.options for q in s.train.opinions + s.test)


@pytest.mark.real_model
def test_benchmark_on_real_models(tmp_path, gemma, embedder):
    """Two sample users, two cheap methods, the embedded Gemma and MiniLM: one report."""
    from personalign.runtime.data.sample import load_sample_users

    users = load_sample_users()[:2]
    cfg = BenchConfig(data="sample", out=str(tmp_path / "run"), users=None,
                      methods=["vanilla", "fewshot"])
    models = SharedModels.of(gemma, None, embedder)
    res = run_benchmark(cfg, users, models=models, progress=False)
    rows = [json.loads(x) for x in (res.out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 12  # users x methods x test questions
    assert all(math.isclose(float(np.logaddexp.reduce(r["logprobs"])), 0, abs_tol=1e-4)
               for r in rows)
    fewshot = next(r for r in res.summary["per_method"] if r["method"] == "fewshot")
    assert 0.0 <= fewshot["accuracy"] <= 1.0 and fewshot["users"] == 2
    # few-shot shows the model the user's answers: some answers differ from vanilla's
    assert fewshot["differs_from_vanilla"] > 0
    assert gemma.usage.by_phase["fewshot/predict"].scored_items == 24
