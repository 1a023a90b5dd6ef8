"""Personalization service: fit any registered method for a user, then answer as that user.

    POST /v1/users/{user_id}/fit          {"method": "fermi", "profile": {...},
                                           "opinions": [...], "preset": "quick"}
                                          -> 202 {"job_id": ...}; fitting runs in the background
    GET  /v1/jobs/{job_id}                -> status, error or the fit summary
    GET  /v1/users/{user_id}              -> the stored personalization (method, prompts)
    POST /v1/users/{user_id}/answer       {"questions": [{"question", "options"}]}
                                          -> the option this user would pick, per question
    DELETE /v1/users/{user_id}            -> forget the user (their data never leaves the store)
    /openai/v1/...                        the same models, OpenAI-compatible (chat, completions)

Each user's method is fit on that user's opinions alone (through the method protocol) and
stored under ``$PERSONALIGN_HOME/service/users``; nothing is pooled across users. The domain
class raises the project's errors; only ``create_app`` maps them to HTTP status codes.
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

from fastapi import FastAPI
from pydantic import BaseModel, Field, field_validator

from personalign.methods import MethodSettings, build, load
from personalign.runtime import models, settings
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.errors import (
    ConfigError, DataError, ModelError, NotFoundError, PersonalignError,
)
from personalign.runtime.personalizer import Personalizer, SharedModels

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
    method: str = "fermi"
    profile: dict[str, str] = Field(default_factory=dict)
    opinions: list[OpinionIn] = Field(min_length=2)
    preset: str = "quick"


class AnswerRequest(BaseModel):
    questions: list[QuestionIn] = Field(min_length=1)


@dataclass
class Job:
    job_id: str
    user_id: str
    method: str
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
        self.models = SharedModels(config.task_model, config.optimizer_model)
        if task_llm is not None:
            self.models = SharedModels.of(task_llm, optimizer_llm, embedder)
        self._load_lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        # One fit at a time: the models run one forward at a time anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fit")

    def loaded(self) -> SharedModels:
        """The shared models, loaded once (the first request pays for it)."""
        with self._load_lock:
            for part in ("task_llm", "optimizer_llm", "embedding"):
                getattr(self.models, part)
        return self.models

    def path(self, user_id: str) -> Path:
        if not _USER_ID.fullmatch(user_id):
            raise DataError("may contain letters, digits, '_', '-', '.' only",
                            field="user_id")
        return self.store / f"{user_id}.json"

    def submit_fit(self, user_id: str, request: FitRequest) -> Job:
        path = self.path(user_id)
        method = build(request.method, self.models, MethodSettings(preset=request.preset))
        job = Job(uuid.uuid4().hex, user_id, method.name)
        self.jobs[job.job_id] = job
        user = User(user_id, dict(request.profile), tuple(
            Opinion(o.question, tuple(o.options), o.answer) for o in request.opinions))

        def work() -> None:
            job.status = "running"
            try:
                self.loaded()
                method.fit(user).save(path)
                report = method.fit_report()
                job.summary = {"method": method.name,
                               **({"prompts": len(report["pool"]),
                                   "best_train_score": max(p["train_score"]
                                                           for p in report["pool"]),
                                   "collapsed": report.get("collapsed")}
                                  if report.get("pool") else {})}
                job.status = "done"
            except Exception as e:  # reported through the job, never lost in a thread
                log.error("fit %s failed: %s", job.job_id, traceback.format_exc())
                job.status, job.error = "failed", str(e)

        self._executor.submit(work)
        return job

    def job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise NotFoundError(f"no job {job_id!r}")
        return self.jobs[job_id]

    def personalizer(self, user_id: str) -> Personalizer:
        path = self.path(user_id)
        if not path.exists():
            raise NotFoundError(f"user {user_id!r} has no personalization yet")
        return load(path, self.loaded())

    def forget(self, user_id: str) -> bool:
        path = self.path(user_id)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed


#: how the project's errors read over HTTP
STATUS = {NotFoundError: 404, DataError: 422, ConfigError: 422, ModelError: 503}


def create_app(config: ServiceConfig | None = None, **components) -> FastAPI:
    config = config or ServiceConfig()
    service = PersonalizationService(config, **components)
    app = FastAPI(title="personalign", version="0.1.0",
                  description="Few-shot personalization of LLMs (Fermi) as a service.")
    app.state.service = service

    @app.exception_handler(PersonalignError)
    def _project_error(request, exc: PersonalignError):
        from fastapi.responses import JSONResponse

        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 422)
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "task_model": config.task_model,
                "optimizer_model": config.optimizer_model}

    @app.post("/v1/users/{user_id}/fit", status_code=202)
    def fit(user_id: str, body: FitRequest) -> dict:
        job = service.submit_fit(user_id, body)
        return {"job_id": job.job_id, "status": job.status}

    @app.get("/v1/jobs/{job_id}")
    def job_status(job_id: str) -> dict:
        return service.job(job_id).__dict__

    @app.get("/v1/users/{user_id}")
    def user(user_id: str) -> dict:
        method = service.personalizer(user_id)
        report = method.state()
        return {"user_id": user_id, "method": method.name,
                "prompts": [{"prompt": p["prompt"], "train_score": p["train_score"]}
                            for p in report.get("pool", [])]}

    @app.delete("/v1/users/{user_id}")
    def forget(user_id: str) -> dict:
        return {"user_id": user_id, "deleted": service.forget(user_id)}

    @app.post("/v1/users/{user_id}/answer")
    def answer(user_id: str, body: AnswerRequest) -> dict:
        method = service.personalizer(user_id)
        questions = [Opinion(q.question, tuple(q.options), 0) for q in body.questions]
        return {"method": method.name, "answers": [
            {"choice": a.choice, "answer": None if a.choice is None else q.options[a.choice],
             "prompt": a.prompt}
            for q, a in zip(body.questions, method.predict(questions))]}

    if config.serve_openai:
        from personalign.service.openai_server import create_openai_app

        # The same loaded models, also under the OpenAI API shape.
        shared = service.loaded()
        app.mount("/openai", create_openai_app({config.task_model: shared.task_llm,
                                                config.optimizer_model: shared.optimizer_llm}))
    return app
