"""Budgets: projected calls before a run, hard limits per user and per run that stop the work
cleanly and are recorded, and a rerun with a raised limit that continues from there."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from personalign.bench.projection import project_run
from personalign.bench.runner import BenchConfig, run_benchmark, select_users
from personalign.methods import MethodSettings
from personalign.runtime.budget import Allowance, BudgetExceeded, Limits, Spend, watch
from personalign.runtime.errors import ConfigError
from personalign.runtime.executor import ExecutorConfig
from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import make_user

METHODS = ["random", "vanilla", "profile"]  # 20 test questions: 20 task calls per method


def _users(n=3):
    return [make_user(f"u{i}", 40) for i in range(n)]


def _bench(out: Path, limits: Limits, task_model="fake:task", workers=1):
    cfg = BenchConfig(data="synthetic", out=str(out), users=None, methods=METHODS,
                      settings=MethodSettings(preset="tiny"), task_model=task_model,
                      limits=limits, execution=ExecutorConfig(workers=workers, threads=workers))
    return run_benchmark(cfg, _users(), progress=False)


def _rows(out: Path) -> str:
    return (out / "results.jsonl").read_text()


def test_allowance_takes_the_tighter_bound_and_names_it():
    limits = Limits(user_calls=100, run_calls=50, user_tokens=1000)
    a = Allowance.remaining(limits, user=Spend(calls=10), run=Spend(calls=45), deadline=None)
    assert a.calls == 5 and a.names["calls"] == "run_calls 50" and a.tokens == 1000
    a.charge(calls=5)
    with pytest.raises(BudgetExceeded, match="run_calls 50 reached"):
        a.charge(calls=1)
    spent = Allowance.remaining(limits, user=Spend(calls=100), run=Spend(), deadline=None)
    assert spent.exhausted() == "user_calls 100 reached"
    assert Allowance.remaining(Limits(), Spend(10**9, 10**9), Spend(), None).exhausted() is None
    with pytest.raises(ConfigError):
        Limits(user_calls=0)


def test_watch_charges_calls_from_another_thread_and_models_loaded_inside():
    # The DSPy peers' loopback server calls the models from its own thread.
    task = FakeLLM(model_id="task")
    models = SharedModels.of(task)
    allowance = Allowance(calls=3, names={"calls": "user_calls 3"})
    stopped = []

    def serve() -> None:
        try:
            for prompt in ("a", "b", "c", "d"):
                models.llm("fake:later").generate([prompt])  # loaded inside the block
                task.generate([prompt])
        except BudgetExceeded as e:  # raised in the thread whose call went over
            stopped.append(e.reason)

    with watch(models, allowance):
        thread = threading.Thread(target=serve)
        thread.start()
        thread.join()
    assert stopped == ["user_calls 3 reached"] and allowance.spent.calls == 4
    task.generate(["after"])  # outside the block: not charged
    assert allowance.spent.calls == 4
    assert all(llm.observers == () for llm in models.loaded_llms().values())


def test_projection_matches_what_the_fixed_prompts_spend(tmp_path):
    res = _bench(tmp_path / "run", Limits())
    splits, _ = select_users(_users(), BenchConfig(data="x", out="y", users=None))
    projected = project_run(METHODS, splits, MethodSettings(preset="tiny"))
    assert projected["random"] == {}
    per_user = res.summary["usage"]["per_user"]["u0"]["fake:task"]["by_phase"]
    for spec in ("vanilla", "profile"):
        assert projected[spec][f"{spec}/predict"]["calls_per_user"] == 20
        assert per_user[f"{spec}/predict"]["calls"] == 20


def test_projection_counts_fermi_optimizer_and_scoring_calls():
    splits, _ = select_users(_users(1), BenchConfig(data="x", out="y", users=None))
    paper = project_run(["fermi"], splits, MethodSettings(preset="paper"))["fermi"]
    assert paper["fermi/optimize"]["calls"] == 10 * 4           # T * K
    assert paper["fermi/score"]["calls"] == (1 + 10 * 4) * 16   # every prompt on 16 opinions
    assert paper["fermi/pool"]["calls"] == 5 * 4                # the memory's top L on 4 demos
    assert paper["fermi/predict"]["calls"] == 20
    # Fermi + few-shot: the same calls, three past opinions with each predicted question
    # (and with each scored one, context_at_fit)
    at_fit = project_run(["fermi+fewshot"], splits, MethodSettings(
        preset="paper", fermi={"context_at_fit": True}))
    predict_only = project_run(["fermi+fewshot"], splits, MethodSettings(preset="paper"))
    for phase in ("fermi/score", "fermi/pool"):
        assert at_fit["fermi+fewshot"][phase]["calls"] == paper[phase]["calls"]
        assert at_fit["fermi+fewshot"][phase]["tokens"] > predict_only["fermi+fewshot"][phase][
            "tokens"] == paper[phase]["tokens"]
    assert at_fit["fermi+fewshot"]["fermi+fewshot/predict"]["tokens"] == predict_only[
        "fermi+fewshot"]["fermi+fewshot/predict"]["tokens"] > paper["fermi/predict"]["tokens"]


def test_run_limit_stops_users_and_a_raised_limit_continues(tmp_path):
    full = _bench(tmp_path / "full", Limits())
    out = tmp_path / "run"
    # u0 spends 40 calls; u1 and u2 are stopped inside their first scored method.
    first = _bench(out, Limits(run_calls=50))
    assert [r["user_id"] for r in first.records] == ["u0"]
    assert first.stopped == {"u1": "run_calls 50 reached", "u2": "run_calls 50 reached"}
    config = json.loads((out / "config.json").read_text())
    assert config["stopped_users"] == first.stopped
    saved = {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")}
    assert len(saved) == 3 + 2  # u0's three units; u1 and u2 finished only "random"

    second = _bench(out, Limits(run_calls=500))
    assert second.stopped == {}
    assert {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")
            if p.name in saved} == saved  # nothing finished was redone
    assert _rows(out) == _rows(full.out)


def test_user_limit_with_two_workers(tmp_path):
    out = tmp_path / "run"
    first = _bench(out, Limits(user_calls=30), workers=2)
    assert first.records == []
    assert set(first.stopped) == {"u0", "u1", "u2"}
    assert set(first.stopped.values()) == {"user_calls 30 reached"}
    second = _bench(out, Limits(user_calls=40), workers=2)
    assert second.stopped == {} and len(second.records) == 3


def test_user_wall_time_limit(tmp_path):
    # 20 calls of 50 ms: vanilla alone takes a second, over the 0.3 s a user may spend.
    res = _bench(tmp_path / "run", Limits(user_seconds=0.3), task_model="fake:slow@0.05")
    assert set(res.stopped.values()) == {"user_seconds 0.3 reached"}
    assert res.records == []


@pytest.mark.parametrize("bad", [["--workers", "0"], ["--executor", "slurm"],
                                 ["--max-user-calls", "0"], ["--address", "auto"],
                                 ["--threads", "0"]])
def test_bad_cli_input_is_one_line_exit_2_nothing_written(tmp_path, bad):
    data = tmp_path / "users.jsonl"
    data.write_text("")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "personalign.cli.main", "bench", "opinionqa", "--data",
         str(data), "--out", str(out), "--methods", "vanilla", "--task-model", "fake:t", *bad],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
