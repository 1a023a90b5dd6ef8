"""The personalization service over HTTP: a thin front end over :mod:`.core`.

Management (admin key, or the user's own key where noted)::

    POST   /v1/users                       admin: {"user_id", "profile"?, "description"?}
                                           -> 201 {"user_id", "api_key"} (the key, shown once)
    GET    /v1/users/{id}/keys             the user's active keys (id, prefix, times; no key)
    POST   /v1/users/{id}/keys             admin: another key for the user (shown once)
    DELETE /v1/users/{id}/keys/{key_id}    revoke one key, at once
    POST   /v1/users/{id}/keys/{key_id}/rotate   admin: a new key in its place, the old revoked
    GET    /v1/admin/keys                  admin: the admin key (id, times)
    POST   /v1/admin/keys/{key_id}/rotate  admin: a new admin key (unless it is configured)
    POST   /v1/users/{id}/opinions         {"opinions": [{"question", "options", "answer"}]}
    POST   /v1/users/{id}/pairs            {"pairs": [{"prompt", "chosen", "rejected"}]}
    POST   /v1/users/{id}/fit              {"method": "fermi"|"fspo"|"fspo:NAME", "preset"}
                                           -> 202 a job, persisted in the store (NAME: an
                                           FSPO model the operator registered; other
                                           methods as served with --method; 429 past
                                           the user's limit of queued fits)
    GET    /v1/jobs/{job_id}               status, stage, progress, error, summary
    GET    /v1/users/{id}                  the learned personalization
    GET    /v1/users/{id}/export           everything stored about the user, as JSON
    POST   /v1/users/{id}/answer           multiple-choice answers as the user
    DELETE /v1/users/{id}                  everything of the user; says what was removed

OpenAI-compatible, personalized for the key's user (an admin names one with
``model: "personalign/<user_id>"``): ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (streaming as server-sent events).

Every error, everywhere, unexpected ones included, is OpenAI's error object (:mod:`.http`).
The routes live in :mod:`.routes`, one router per part; this module assembles them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from fastapi import FastAPI

from personalign.runtime import models as embedded
from personalign.runtime import settings
from personalign.runtime.personalizer import SharedModels
from personalign.service.core import (
    SERVED_METHODS, PersonalizationService, ServiceLimits, UncachedModels,
)
from personalign.serving.http import BodyLimit, install_errors
from personalign.service.routes import keys, openai, users
from personalign.service.store import Store, sqlite_url


@dataclass
class ServiceConfig:
    task_model: str = embedded.DEFAULT_TASK
    optimizer_model: str = embedded.DEFAULT_OPTIMIZER
    database: str | None = None          # SQLAlchemy URL; default: a SQLite file
    admin_key: str | None = None         # None: one is created on first start and printed
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    resume_jobs: bool = True
    #: FSPO models a fit may name (``fspo:NAME``): name -> model or run folder
    fspo_models: dict[str, str] = field(default_factory=dict)
    #: registered methods a fit may name (each without an argument)
    methods: tuple[str, ...] = SERVED_METHODS

    def database_url(self) -> str:
        if self.database:
            return self.database
        path = settings.home() / "service" / "personalign.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite_url(path)


def create_app(config: ServiceConfig | None = None, *, models: SharedModels | None = None,
               task_llm=None, optimizer_llm=None, embedder=None) -> FastAPI:
    """The service app. ``models`` (or loaded ``task_llm``/``optimizer_llm``/``embedder``)
    replace the configured models (tests, notebooks); either way they run uncached."""
    config = config or ServiceConfig()
    if task_llm is not None:
        models = UncachedModels.of(task_llm, optimizer_llm, embedder)
    models = models or UncachedModels(config.task_model, config.optimizer_model)
    store = Store(config.database_url())
    service = PersonalizationService(store, models, config.limits, config.admin_key,
                                     config.fspo_models, config.methods)
    if service.keys.admin_key_created:
        # Shown once; only its hash is stored.
        print(f"personalign: created the admin API key (shown once): "
              f"{service.keys.admin_key_created}", flush=True)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()

    app = FastAPI(title="personalign", version="0.2.0", lifespan=lifespan,
                  description="Few-shot personalization of LLMs (Fermi, FSPO) as a service.")
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_body_bytes)
    # added after the body limit: the outer one, so a 413 gets a request id too
    install_errors(app, lambda request: request.url.path in openai.PATHS)
    for part in (users, keys, openai):
        app.include_router(part.router)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "task_model": models.task, "optimizer_model": models.optimizer,
                "database": store.engine.dialect.name}

    if config.resume_jobs:
        service.resume_jobs()
    return app


__all__ = ["ServiceConfig", "create_app"]
