"""Run per-user work on local processes or a Ray cluster, with models loaded once per worker.

Every per-user run has the same shape: a ``setup()`` that loads what a worker needs (the
shared models) and a ``task(state, job)`` that does one user's work with it. An executor
starts its workers, calls ``setup`` once in each, and hands out jobs as workers free up::

    with make_executor(ExecutorConfig(kind="local", workers=2), setup) as ex:
        for index, result in ex.run(task, jobs):   # in completion order
            ...

``jobs`` is pulled lazily, one job each time a worker is free, so a caller can stop
submitting (a run budget spent) by ending its generator. ``setup`` and ``task`` must be
picklable (module-level functions, bound methods of picklable objects, partials).

- ``local`` (default, no extra dependency): one worker runs in this process; more are
  processes (spawned, so no model or thread state is copied), each with ``threads // workers``
  torch threads. A worker that dies is replaced and its job run again (``retries`` times).
- ``ray``: one actor per worker holds the loaded models. ``address`` joins a running cluster
  (``ray start --head`` / ``auto``); without it a local Ray is started for the run. An actor
  that dies is restarted and its job retried (``max_restarts`` / ``max_task_retries``).

Results must not depend on which worker ran a job: a task draws its seeds from the job (the
user and the run's seed), never from the worker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal

from personalign.runtime.config import Config
from personalign.runtime.errors import ConfigError

Setup = Callable[[], Any]
Task = Callable[[Any, Any], Any]
WAIT_POLL_S = 1.0  # how often a waiting driver's ``on_wait`` runs


@dataclass
class ExecutorConfig(Config):
    """Where per-user work runs. ``threads``: torch threads for the whole run, shared out
    among the workers (None: $PERSONALIGN_THREADS, else the CPU count)."""

    kind: Literal["local", "ray"] = "local"
    workers: int = 1
    threads: int | None = None
    address: str | None = None   # ray only: a running cluster ("auto", "ray://host:10001")
    retries: int = 2             # times a job lost with its worker is run again

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.address and self.kind != "ray":
            raise ConfigError("--address needs --executor ray")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        if self.kind == "ray" and importlib.util.find_spec("ray") is None:
            raise ConfigError("--executor ray needs Ray: pip install 'personalign[ray]'")

    @property
    def total_threads(self) -> int:
        return self.threads or int(os.environ.get("PERSONALIGN_THREADS", "0") or 0) \
            or os.cpu_count() or 1

    @property
    def threads_per_worker(self) -> int:
        return max(1, self.total_threads // self.workers)

    def describe(self) -> str:
        where = f" at {self.address}" if self.address else ""
        return f"{self.kind}{where}, {self.workers} worker(s) x {self.threads_per_worker} thread(s)"


_in_worker = False


def in_worker() -> bool:
    """Whether this process is a worker of a local or Ray executor: its progress bars would
    interleave with the other workers' and the driver's, so per-user work shows none."""
    return _in_worker


def _use_threads(threads: int) -> None:
    """This process's torch threads; models loaded later read $PERSONALIGN_THREADS too."""
    from personalign.runtime.settings import configure_threads

    os.environ["PERSONALIGN_THREADS"] = str(threads)
    with contextlib.suppress(ImportError):
        configure_threads(threads)


class Executor(ABC):
    """Runs ``task(state, job)`` for every job on workers whose ``state = setup()``."""

    def __init__(self, config: ExecutorConfig, setup: Setup):
        self.config = config
        self.setup = setup

    def __enter__(self) -> "Executor":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers (a no-op where they start on first use)."""

    def close(self) -> None:
        """Stop the workers."""

    @abstractmethod
    def run(self, task: Task, jobs: Iterable[Any],
            on_wait: Callable[[], None] | None = None) -> Iterator[tuple[int, Any]]:
        """(job index, result) for every job, in completion order. A task's exception is
        raised here (the jobs not yet started are not run). ``on_wait`` is called about every
        ``WAIT_POLL_S`` seconds while workers run and none has finished (a driver's progress
        display); the in-process executor never waits."""


class InProcessExecutor(Executor):
    """One worker: this process, jobs one after another (models may be in-memory objects)."""

    def __init__(self, config: ExecutorConfig, setup: Setup):
        super().__init__(config, setup)
        self._state: Any = None
        self._ready = False

    def run(self, task: Task, jobs: Iterable[Any],
            on_wait: Callable[[], None] | None = None) -> Iterator[tuple[int, Any]]:
        if not self._ready:
            if self.config.threads:  # only when asked: a notebook keeps its own setting
                _use_threads(self.config.threads)
            self._state, self._ready = self.setup(), True
        for index, job in enumerate(jobs):
            yield index, task(self._state, job)


# ---- local processes -----------------------------------------------------------------------
_worker_state: Any = None


def _exit_with_parent(parent: int) -> None:
    """A worker whose driver was killed exits instead of finishing jobs nobody collects
    (a unit it is writing is atomic: there whole or not at all)."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def _init_process(setup: Setup, threads: int, parent: int) -> None:
    global _worker_state, _in_worker
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _in_worker = True
    _use_threads(threads)
    _worker_state = setup()


def _call_in_process(task: Task, job: Any) -> Any:
    return task(_worker_state, job)


class LocalExecutor(Executor):
    """``workers`` spawned processes on this machine, each loading the models once."""

    def __init__(self, config: ExecutorConfig, setup: Setup):
        super().__init__(config, setup)
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing

        return ProcessPoolExecutor(
            max_workers=self.config.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_process,
            initargs=(self.setup, self.config.threads_per_worker, os.getpid()))

    def start(self) -> None:
        self._pool = self._new_pool()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, task: Task, jobs: Iterable[Any],
            on_wait: Callable[[], None] | None = None) -> Iterator[tuple[int, Any]]:
        if self._pool is None:
            self.start()
        pending = enumerate(jobs)
        running: dict[Future, tuple[int, Any]] = {}
        retries = 0
        try:
            while True:
                # Keep every worker busy; pull the next job only when one is free.
                while len(running) < self.config.workers:
                    nxt = next(pending, None)
                    if nxt is None:
                        break
                    running[self._pool.submit(_call_in_process, task, nxt[1])] = nxt
                if not running:
                    return
                done, _ = wait(running, timeout=WAIT_POLL_S if on_wait else None,
                               return_when=FIRST_COMPLETED)
                if not done:
                    on_wait()
                    continue
                broken = []
                for future in done:
                    index, job = running.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken.append((index, job))
                        continue
                    yield index, result
                if broken:
                    # A worker died (killed, out of memory): the pool is unusable. Start a new
                    # one and run again every job that was in flight.
                    retries += 1
                    if retries > self.config.retries:
                        raise RuntimeError(f"workers died {retries} times; giving up")
                    lost = broken + list(running.values())
                    running.clear()
                    self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._new_pool()
                    for index, job in lost:
                        running[self._pool.submit(_call_in_process, task, job)] = (index, job)
        finally:
            for future in running:
                future.cancel()


# ---- Ray -----------------------------------------------------------------------------------
class _RayWorker:
    """The actor class body: holds one worker's state (the loaded models)."""

    def __init__(self, setup: Setup, threads: int):
        global _in_worker
        _in_worker = True
        _use_threads(threads)
        self.state = setup()

    def run(self, task: Task, job: Any) -> Any:
        return task(self.state, job)


class RayExecutor(Executor):
    """One Ray actor per worker; jobs go to whichever actor is free."""

    def __init__(self, config: ExecutorConfig, setup: Setup):
        super().__init__(config, setup)
        self._actors: list = []
        self._started_ray = False

    def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'personalign[ray]'") \
                from None
        cfg = self.config
        if not ray.is_initialized():
            if cfg.address:
                ray.init(address=cfg.address, log_to_driver=False)
            else:
                ray.init(num_cpus=cfg.workers * cfg.threads_per_worker,
                         include_dashboard=False, log_to_driver=False)
            self._started_ray = True
        actor = ray.remote(_RayWorker).options(
            num_cpus=cfg.threads_per_worker, max_restarts=cfg.retries,
            max_task_retries=cfg.retries)
        self._actors = [actor.remote(self.setup, cfg.threads_per_worker)
                        for _ in range(cfg.workers)]

    def close(self) -> None:
        import ray

        for a in self._actors:
            ray.kill(a)
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def run(self, task: Task, jobs: Iterable[Any],
            on_wait: Callable[[], None] | None = None) -> Iterator[tuple[int, Any]]:
        import ray

        if not self._actors:
            self.start()
        pending = enumerate(jobs)
        free = list(self._actors)
        running: dict[Any, tuple[int, Any]] = {}  # object ref -> (index, actor)
        task_ref = ray.put(task)
        while True:
            while free:
                nxt = next(pending, None)
                if nxt is None:
                    break
                actor = free.pop()
                running[actor.run.remote(task_ref, nxt[1])] = (nxt[0], actor)
            if not running:
                return
            done, _ = ray.wait(list(running), num_returns=1,
                               timeout=WAIT_POLL_S if on_wait else None)
            if not done:
                on_wait()
                continue
            for ref in done:
                index, actor = running.pop(ref)
                free.append(actor)
                yield index, ray.get(ref)


def make_executor(config: ExecutorConfig, setup: Setup) -> Executor:
    if config.kind == "ray":
        return RayExecutor(config, setup)
    if config.workers == 1:
        return InProcessExecutor(config, setup)
    return LocalExecutor(config, setup)
