"""Fit jobs in the background: one at a time, the waiting user served least recently first,
and the models a job runs on (uncached: user data never enters the shared call cache),
observed so that a deletion stops it at its next call."""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from personalign.runtime.llm.base import LLM, CallObserver
from personalign.runtime.personalizer import SharedModels


class UncachedModels(SharedModels):
    """Shared models whose LLMs run without the call cache: a cache entry derived from a
    user's text would outlive the user's deletion."""

    llm_cache = False

    @classmethod
    def of(cls, task_llm: LLM, optimizer_llm: LLM | None = None, embedder=None,
           scoring="letter") -> "UncachedModels":
        for llm in (task_llm, optimizer_llm):
            if llm is not None:
                llm.cache = None
        return super().of(task_llm, optimizer_llm, embedder, scoring)  # type: ignore


class Cancelled(BaseException):
    """A fit whose user was deleted while it ran (a BaseException: a method's own
    ``except Exception`` around a model call does not swallow it)."""


class FitQueue:
    """Fit jobs, run one at a time (the models run one forward at a time anyway) on one
    thread, the waiting user served least recently first: one user's queue of fits never
    holds back another user's."""

    def __init__(self, run: Callable[[str], None]):
        self._run = run
        self._waiting: dict[str, deque[str]] = {}    # user -> job ids, in arrival order
        self._served: dict[str, int] = {}            # user -> turn of their last fit
        self._turn = 0
        self._running = False
        self._ready = threading.Condition()
        self._closed = False
        threading.Thread(target=self._work, name="fit", daemon=True).start()

    def put(self, user_id: str, job_id: str) -> None:
        with self._ready:
            self._waiting.setdefault(user_id, deque()).append(job_id)
            self._ready.notify()

    def _next(self) -> str | None:
        with self._ready:
            while not self._waiting and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            # dicts keep insertion order: among users never served, the first to arrive
            user_id = min(self._waiting, key=lambda u: self._served.get(u, -1))
            jobs = self._waiting[user_id]
            job_id = jobs.popleft()
            if not jobs:
                del self._waiting[user_id]
            self._turn += 1
            self._served[user_id] = self._turn
            self._running = True
            return job_id

    def _work(self) -> None:
        while (job_id := self._next()) is not None:
            try:
                self._run(job_id)
            finally:
                with self._ready:
                    self._running = False
                    self._ready.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no fit runs or waits; whether that happened within ``timeout``."""
        with self._ready:
            return self._ready.wait_for(
                lambda: self._closed or not (self._waiting or self._running), timeout)

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._waiting.clear()
            self._ready.notify_all()


class _Watch(CallObserver):
    """A fit job's observer: each model call first checks the job's cancel flag (a deletion
    stops the fit at its next call) and counts toward the job's progress.

    It observes the fit's own views of the models (:meth:`models`), not the shared LLMs:
    those also serve the chats and fits running beside it, which it must neither cancel nor
    count, and telling them apart by thread would miss calls made from a helper thread (as
    the DSPy peers' loopback server makes them)."""

    def __init__(self, job_id: str, cancelled: threading.Event, update):
        self.job_id, self.cancelled, self.update = job_id, cancelled, update
        self.iterations: int | None = None
        self.proposals = 0
        self.last = 0.0
        self.optimizer: LLM | None = None

    def expect(self, iterations: int | None) -> None:
        self.iterations = iterations if isinstance(iterations, int) and iterations > 0 else None

    def models(self, models: SharedModels) -> SharedModels:
        """The fit's models: uncached views of every loaded LLM (same weights and counters)."""
        watched = models.viewed()
        self.optimizer = watched.optimizer_llm
        return watched

    def before_call(self, llm: LLM, kind: str) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        if llm is self.optimizer and kind == "generate":
            self.proposals += 1
            if self.iterations:  # Fermi: one proposal round per iteration
                progress = 0.1 + 0.85 * min(1.0, (self.proposals - 1) / self.iterations)
                if progress > self.last:
                    self.last = progress
                    self.update(self.job_id, progress=round(progress, 3),
                                stage=f"fitting (round {self.proposals} of {self.iterations})")
