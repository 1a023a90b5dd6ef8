"""Crash safety, proven by really killing processes: SIGKILL the benchmark's driver, or one of
its workers, in the middle of a run; the same command run again finishes with no finished
unit written twice, no row lost or duplicated, and the results of an uninterrupted run.

The task model is the test-only ``fake:NAME@SECONDS`` spec: deterministic answers, slowed to
make the run last a few seconds on any machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

METHODS = "random,vanilla,profile"
USERS = 4
UNITS = USERS * 3


def command(data: Path, out: Path, workers: int, delay: float,
            executor: str = "local") -> list[str]:
    return [sys.executable, "-m", "personalign.cli.main", "bench", "opinionqa",
            "--data", str(data), "--out", str(out), "--users", str(USERS),
            "--methods", METHODS, "--task-model", f"fake:task@{delay}",
            "--executor", executor, "--workers", str(workers), "--threads", str(workers)]


def env() -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH")) if p), "PERSONALIGN_NO_CACHE": "1"}


def units(out: Path) -> dict[str, tuple[int, int]]:
    """Each finished unit file with its inode and mtime: a rewrite (atomic: a new file moved
    over the old one) changes both."""
    found = {}
    for p in (out / "units").glob("*.json"):
        st = p.stat()
        found[p.name] = (st.st_ino, st.st_mtime_ns)
    return found


def wait_for_units(out: Path, at_least: int, proc: subprocess.Popen, timeout=120) -> None:
    end = time.time() + timeout
    while len(units(out)) < at_least:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < end, "no unit finished in time"
        time.sleep(0.02)


# A local Ray's dashboard and runtime-env agents outlive a SIGKILLed driver (its raylet, GCS
# and actors do not); they run no personalign code and are cleaned up here.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def session_commands(pgid: int) -> list[str]:
    done = subprocess.run(["ps", "-o", "args=", "-g", str(pgid)], capture_output=True,
                          text=True)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def wait_gone(pgid: int, timeout=30) -> None:
    """Every process of the killed run that could still write has exited (workers follow
    their driver)."""
    end = time.time() + timeout
    while time.time() < end:
        left = session_commands(pgid)
        if not [c for c in left if not c.startswith(RAY_AGENTS)]:
            if left:
                os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail(f"workers outlived their killed driver: {session_commands(pgid)}")


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def worker_pids(driver: int) -> list[int]:
    """The driver's pool workers (spawned; not its resource tracker)."""
    children = Path(f"/proc/{driver}/task/{driver}/children").read_text().split()
    pids = []
    for pid in map(int, children):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline:
            pids.append(pid)
    return pids


@pytest.fixture(scope="module")
def reference(dev_data_path, tmp_path_factory) -> list[dict]:
    """The uninterrupted run's rows (one worker, no delay)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(command(dev_data_path, out, 1, 0.0), env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = rows(out)
    assert len(found) == USERS * 3 * 30
    return found


def check_finished(out: Path, before: dict, reference: list[dict]) -> None:
    after = units(out)
    assert len(after) == UNITS
    redone = [name for name, stamp in before.items() if after.get(name) != stamp]
    assert redone == [], f"finished units written again: {redone}"
    found = rows(out)
    keys = [(r["user_id"], r["method"], r["qid"]) for r in found]
    assert len(keys) == len(set(keys)), "duplicated rows"
    assert found == reference


@pytest.mark.parametrize("executor,workers", [("local", 1), ("local", 2), ("ray", 2)])
def test_driver_killed_mid_run_then_rerun(dev_data_path, tmp_path, reference, executor,
                                          workers):
    if executor == "ray":
        pytest.importorskip("ray", reason="Ray is an optional extra")
    out = tmp_path / "run"
    cmd = command(dev_data_path, out, workers, 0.02, executor)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_units(out, 3, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_gone(proc.pid)
    before = units(out)
    assert 3 <= len(before) < UNITS, "the kill did not land mid-run"
    assert not (out / "results.jsonl").exists()

    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    check_finished(out, before, reference)
    config = json.loads((out / "config.json").read_text())
    assert config["units_run_this_session"] == UNITS - len(before)


def test_worker_killed_mid_run_is_replaced_then_rerun_does_nothing(dev_data_path, tmp_path,
                                                                     reference):
    out = tmp_path / "run"
    cmd = command(dev_data_path, out, 2, 0.02)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_units(out, 3, proc)
    victims = worker_pids(proc.pid)
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    before = units(out)
    assert len(before) < UNITS, "the kill did not land mid-run"
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]  # the run itself recovered
    check_finished(out, before, reference)

    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    check_finished(out, units(out), reference)
    assert json.loads((out / "config.json").read_text())["units_run_this_session"] == 0
