"""Personalization service: fit a user's Fermi prompt pool, then answer as that user.

    POST /v1/users/{user_id}/fermi        {"profile": {...}, "opinions": [...], "preset": "quick"}
                                          -> 202 {"job_id": ...}; fitting runs in the background
    GET  /v1/jobs/{job_id}                -> status, error or the fit summary
    GET  /v1/users/{user_id}              -> the stored personalization (prompts and scores)
    POST /v1/users/{user_id}/answer       {"questions": [{"question", "options"}]}
                                          -> the option this user would pick, per question
    DELETE /v1/users/{user_id}            -> forget the user (their data never leaves the store)
    /openai/v1/...                        the same models, OpenAI-compatible (chat, completions)

Each user's prompts are learned from that user's opinions alone and stored under
``$PERSONALIGN_HOME/service/users``; nothing is pooled across users.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, field_validator

from personalign.fermi.config import preset as fermi_preset
from personalign.fermi.optimizer import Fermi
from personalign.runtime import models, settings
from personalign.runtime.data.records import Opinion
from personalign.runtime.errors import PersonalignError

log = logging.getLogger(__name__)

_USER_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class QuestionIn(BaseModel):
    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=2)


class OpinionIn(QuestionIn):
    answer: int = Field(ge=0)

    @field_validator("answer")
    @classmethod
    def _in_range(cls, v: int, info) -> int:
        options = info.data.get("options") or []
        if options and v >= len(options):
            raise ValueError(f"answer {v} is out of range for {len(options)} options")
        return v


class FitRequest(BaseModel):
    profile: dict[str, str] = Field(default_factory=dict)
    opinions: list[OpinionIn] = Field(min_length=2)
    preset: str = "quick"


class AnswerRequest(BaseModel):
    questions: list[QuestionIn] = Field(min_length=1)
    use_rop: bool = True


@dataclass
class Job:
    job_id: str
    user_id: str
    status: str = "queued"  # queued | running | done | failed
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServiceConfig:
    task_model: str = models.DEFAULT_SCORER
    optimizer_model: str = models.DEFAULT_GENERATOR
    store: Path | None = None
    serve_openai: bool = True


class PersonalizationService:
    """Owns the models (loaded once), the per-user store and the background fit queue."""

    def __init__(self, config: ServiceConfig, task_llm=None, optimizer_llm=None, embedder=None):
        self.config = config
        self.store = Path(config.store or settings.home() / "service" / "users")
        self.store.mkdir(parents=True, exist_ok=True)
        self._task_llm, self._optimizer_llm, self._embedder = task_llm, optimizer_llm, embedder
        self._load_lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        # One fit at a time: the models run one forward at a time anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fit")

    def components(self):
        with self._load_lock:
            if self._task_llm is None:
                from personalign.runtime.llm.factory import load_llm

                self._task_llm = load_llm(self.config.task_model)
            if self._optimizer_llm is None:
                from personalign.runtime.llm.factory import load_llm

                self._optimizer_llm = load_llm(self.config.optimizer_model)
            if self._embedder is None:
                from personalign.runtime.embeddings import Embedder

                self._embedder = Embedder()
        return self._task_llm, self._optimizer_llm, self._embedder

    def path(self, user_id: str) -> Path:
        if not _USER_ID.match(user_id):
            raise HTTPException(422, "user_id may contain letters, digits, '_', '-', '.' only")
        return self.store / f"{user_id}.fermi.json"

    def submit_fit(self, user_id: str, request: FitRequest) -> Job:
        path = self.path(user_id)
        config = fermi_preset(request.preset)  # raises ConfigError for an unknown preset
        job = Job(uuid.uuid4().hex, user_id)
        self.jobs[job.job_id] = job
        opinions = [Opinion(o.question, tuple(o.options), o.answer) for o in request.opinions]

        def work() -> None:
            job.status = "running"
            try:
                task, optimizer, embedder = self.components()
                fermi = Fermi(config, task, optimizer, embedder)
                fermi.fit(opinions, request.profile, user_id=user_id)
                fermi.save(path)
                job.summary = {"prompts": len(fermi.pool),
                               "best_train_score": max(p.train_score for p in fermi.pool)}
                job.status = "done"
            except Exception as e:  # reported through the job, never lost in a thread
                log.error("fit %s failed: %s", job.job_id, traceback.format_exc())
                job.status, job.error = "failed", str(e)

        self._executor.submit(work)
        return job

    def load(self, user_id: str) -> Fermi:
        path = self.path(user_id)
        if not path.exists():
            raise HTTPException(404, f"user {user_id!r} has no personalization yet")
        task, optimizer, embedder = self.components()
        return Fermi.load(path, task, optimizer, embedder)


def create_app(config: ServiceConfig | None = None, **components) -> FastAPI:
    config = config or ServiceConfig()
    service = PersonalizationService(config, **components)
    app = FastAPI(title="personalign", version="0.1.0",
                  description="Few-shot personalization of LLMs (Fermi) as a service.")
    app.state.service = service

    @app.exception_handler(PersonalignError)
    def _user_error(request, exc: PersonalignError):
        from fastapi.responses import JSONResponse

        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "task_model": config.task_model,
                "optimizer_model": config.optimizer_model}

    @app.post("/v1/users/{user_id}/fermi", status_code=202)
    def fit(user_id: str, body: FitRequest) -> dict:
        job = service.submit_fit(user_id, body)
        return {"job_id": job.job_id, "status": job.status}

    @app.get("/v1/jobs/{job_id}")
    def job_status(job_id: str) -> dict:
        job = service.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job.__dict__

    @app.get("/v1/users/{user_id}")
    def user(user_id: str) -> dict:
        fermi = service.load(user_id)
        return {"user_id": user_id, "preset": fermi.config.preset,
                "prompts": [{"prompt": p.prompt, "train_score": p.train_score} for p in fermi.pool]}

    @app.delete("/v1/users/{user_id}")
    def forget(user_id: str) -> dict:
        path = service.path(user_id)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return {"user_id": user_id, "deleted": existed}

    @app.post("/v1/users/{user_id}/answer")
    def answer(user_id: str, body: AnswerRequest) -> dict:
        fermi = service.load(user_id)
        questions = [{"question": q.question, "options": q.options} for q in body.questions]
        details = fermi.predict_details(questions, use_rop=body.use_rop)
        return {"answers": [
            {"choice": d["choice"],
             "answer": None if d["choice"] is None else q.options[d["choice"]],
             "prompt": fermi.pool[d["prompt_index"]].prompt}
            for q, d in zip(body.questions, details)]}

    if config.serve_openai:
        from personalign.service.openai_server import create_openai_app

        # The same loaded models, also under the OpenAI API shape.
        task, optimizer, _ = service.components()
        app.mount("/openai", create_openai_app({config.task_model: task,
                                                config.optimizer_model: optimizer}))
    return app
