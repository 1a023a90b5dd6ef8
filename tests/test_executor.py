"""Executors: every job once, models set up once per worker, a dead worker's job run again,
and the benchmark's results identical with every executor and worker count."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from personalign.bench.runner import BenchConfig, run_benchmark
from personalign.methods import MethodSettings
from personalign.runtime.errors import ConfigError
from personalign.runtime.executor import ExecutorConfig, in_worker, make_executor

from tests.fermi.conftest import make_user

METHODS = ["random", "vanilla", "profile", "fewshot:bm25"]


# ---- module-level (picklable) setup and tasks --------------------------------------------
def setup_counter() -> dict:
    """A worker's state: its pid and how many times setup ran in it."""
    setup_counter.calls = getattr(setup_counter, "calls", 0) + 1
    return {"pid": os.getpid(), "setups": setup_counter.calls}


def square(state: dict, job: int) -> tuple[int, int, int]:
    return job * job, state["pid"], state["setups"]


def worker_flag(state: dict, job: int) -> bool:
    return in_worker()


def slow_square(state: dict, job: int) -> int:
    time.sleep(2.5)
    return job * job


def die_once(state: dict, job: tuple[int, str]) -> int:
    """Kill this worker the first time job 2 runs (a marker file remembers), like a worker
    lost to the OOM killer; the job must be run again elsewhere."""
    value, marker = job
    if value == 2 and not os.path.exists(marker):
        Path(marker).write_text("died")
        os.kill(os.getpid(), 9)
    return value * 10


def _users(n=4):
    return [make_user(f"u{i}", 40) for i in range(n)]


def bench(tmp_path: Path, name: str, execution: ExecutorConfig, users=None, **kw):
    cfg = BenchConfig(data="synthetic", out=str(tmp_path / name), users=None, methods=METHODS,
                      settings=MethodSettings(preset="tiny"), task_model="fake:task",
                      optimizer_model="fake:opt", execution=execution, **kw)
    return run_benchmark(cfg, users or _users(), progress=False)


def check_changed_data_stops_the_run(tmp_path: Path, execution: ExecutorConfig) -> None:
    """A user whose data rows changed since their units were saved stops the rerun, whichever
    executor runs it, before any unit is written."""
    bench(tmp_path, "run", ExecutorConfig())
    users = _users()
    first = users[0]
    changed = replace(first.opinions[0], answer=(first.opinions[0].answer + 1) % 3)
    users[0] = replace(first, opinions=(changed,) + first.opinions[1:])
    units = tmp_path / "run" / "units"
    stamps = {p.name: p.stat().st_mtime_ns for p in units.glob("*.json")}
    with pytest.raises(ConfigError, match="computed from other inputs"):
        bench(tmp_path, "run", execution, users=users)
    assert {p.name: p.stat().st_mtime_ns for p in units.glob("*.json")} == stamps


# ---- local ---------------------------------------------------------------------------------
def test_local_workers_set_up_once_and_run_every_job():
    with make_executor(ExecutorConfig(workers=2, threads=2), setup_counter) as ex:
        out = dict(ex.run(square, range(8)))
    assert sorted(out) == list(range(8))
    assert [out[i][0] for i in range(8)] == [i * i for i in range(8)]
    assert {setups for _, _, setups in out.values()} == {1}  # never set up twice in a worker
    assert 1 <= len({pid for _, pid, _ in out.values()}) <= 2
    assert os.getpid() not in {pid for _, pid, _ in out.values()}


def test_a_waiting_driver_is_called_back_while_workers_run():
    waits = []
    with make_executor(ExecutorConfig(workers=2, threads=2), setup_counter) as ex:
        out = dict(ex.run(slow_square, range(2), on_wait=lambda: waits.append(time.time())))
    assert out == {0: 0, 1: 1}
    assert len(waits) >= 2  # jobs of 2.5 s, polled about every second


def test_in_process_executor_for_one_worker():
    with make_executor(ExecutorConfig(workers=1), setup_counter) as ex:
        out = dict(ex.run(square, range(3)))
    assert {pid for _, pid, _ in out.values()} == {os.getpid()}


def test_only_worker_processes_know_they_are_workers():
    # (workers hide their per-user progress bars; the driver keeps its own)
    with make_executor(ExecutorConfig(workers=2, threads=2), setup_counter) as ex:
        assert set(dict(ex.run(worker_flag, range(4))).values()) == {True}
    with make_executor(ExecutorConfig(workers=1), setup_counter) as ex:
        assert set(dict(ex.run(worker_flag, range(2))).values()) == {False}
    assert not in_worker()


def test_local_worker_killed_is_replaced_and_its_job_rerun(tmp_path):
    marker = str(tmp_path / "died")
    with make_executor(ExecutorConfig(workers=2, threads=2), setup_counter) as ex:
        out = dict(ex.run(die_once, [(i, marker) for i in range(5)]))
    assert Path(marker).exists()  # a worker really died
    assert out == {i: i * 10 for i in range(5)}


def test_bad_executor_config():
    for bad in ({"workers": 0}, {"threads": 0}, {"kind": "slurm"},
                {"kind": "local", "address": "auto"}):
        with pytest.raises(ConfigError):
            ExecutorConfig(**bad)


def test_in_memory_models_need_the_in_process_executor(tmp_path):
    from personalign.runtime.llm.fake import FakeLLM
    from personalign.runtime.personalizer import SharedModels

    cfg = BenchConfig(data="synthetic", out=str(tmp_path / "x"), methods=["vanilla"],
                      execution=ExecutorConfig(workers=2))
    with pytest.raises(ConfigError, match="in-memory models"):
        run_benchmark(cfg, _users(), models=SharedModels.of(FakeLLM()), progress=False)
    assert not (tmp_path / "x").exists()


def test_bench_same_results_with_one_or_two_local_workers(tmp_path):
    one = bench(tmp_path, "one", ExecutorConfig(workers=1, threads=1))
    two = bench(tmp_path, "two", ExecutorConfig(workers=2, threads=2))
    rows = (one.out / "results.jsonl").read_text()
    assert len(rows.splitlines()) == 4 * len(METHODS) * 20
    assert rows == (two.out / "results.jsonl").read_text()
    assert (one.out / "per_method.csv").read_text() == (two.out / "per_method.csv").read_text()


def test_changed_data_stops_a_run_on_local_workers(tmp_path):
    check_changed_data_stops_the_run(tmp_path, ExecutorConfig(workers=2, threads=2))


# ---- Ray -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install "
                                            "'personalign[ray]'")
    # The workers import this test module by name: they need the repository on their path.
    repo = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "PERSONALIGN_NO_CACHE": "1"}})
    yield ray
    ray.shutdown()


def test_ray_actors_set_up_once_and_run_every_job(local_ray):
    with make_executor(ExecutorConfig(kind="ray", workers=2, threads=2), setup_counter) as ex:
        out = dict(ex.run(square, range(8)))
    assert [out[i][0] for i in range(8)] == [i * i for i in range(8)]
    assert {setups for _, _, setups in out.values()} == {1}
    assert os.getpid() not in {pid for _, pid, _ in out.values()}


def test_ray_lost_actor_is_restarted_and_its_job_retried(local_ray, tmp_path):
    marker = str(tmp_path / "died")
    with make_executor(ExecutorConfig(kind="ray", workers=2, threads=2), setup_counter) as ex:
        out = dict(ex.run(die_once, [(i, marker) for i in range(5)]))
    assert Path(marker).exists()
    assert out == {i: i * 10 for i in range(5)}


def test_bench_ray_gives_the_same_report_as_local(local_ray, tmp_path):
    local = bench(tmp_path, "local", ExecutorConfig(workers=1, threads=1))
    ray_run = bench(tmp_path, "ray", ExecutorConfig(kind="ray", workers=2, threads=2))
    assert (local.out / "results.jsonl").read_text() == \
        (ray_run.out / "results.jsonl").read_text()
    assert (local.out / "per_method.csv").read_text() == \
        (ray_run.out / "per_method.csv").read_text()
    assert (local.out / "per_user.csv").read_text() == (ray_run.out / "per_user.csv").read_text()


def test_changed_data_stops_a_run_on_ray(local_ray, tmp_path):
    check_changed_data_stops_the_run(tmp_path, ExecutorConfig(kind="ray", workers=2, threads=2))
