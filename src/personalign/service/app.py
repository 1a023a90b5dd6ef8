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
                                           FSPO model the operator registered; 429 past
                                           the user's limit of queued fits)
    GET    /v1/jobs/{job_id}               status, stage, progress, error, summary
    GET    /v1/users/{id}                  the learned personalization
    GET    /v1/users/{id}/export           everything stored about the user, as JSON
    POST   /v1/users/{id}/answer           multiple-choice answers as the user
    DELETE /v1/users/{id}                  everything of the user; says what was removed

OpenAI-compatible, personalized for the key's user (an admin names one with
``model: "personalign/<user_id>"``): ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (streaming as server-sent events).

Every error, everywhere, unexpected ones included, is OpenAI's error object ``{"error":
{"message", "type", "param", "code", "request_id"}}``; ``param`` names the offending field and
``request_id`` (also the ``x-request-id`` header) finds the server's log line. The log keeps,
per request: its id, method, route *template* (no user id), status and duration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from personalign.runtime import models as embedded
from personalign.runtime import settings
from personalign.runtime.data.records import Opinion
from personalign.runtime.data.validate import require_options
from personalign.runtime.errors import (
    DataError, ModelError, NotFoundError, PersonalignError,
)
from personalign.runtime.llm.types import SamplingParams
from personalign.runtime.personalizer import SharedModels
from personalign.service.core import (
    AuthError, ConflictError, ForbiddenError, LimitError, Limits, PersonalizationService,
    Principal, UncachedModels,
)
from personalign.service.schemas import (
    AnswerIn, ChatIn, CompletionIn, FitIn, OpinionsIn, PairsIn, UserIn,
)
from personalign.service.store import Store, sqlite_url

log = logging.getLogger(__name__)

MODEL_PREFIX = "personalign"
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models")


@dataclass
class ServiceConfig:
    task_model: str = embedded.DEFAULT_TASK
    optimizer_model: str = embedded.DEFAULT_OPTIMIZER
    database: str | None = None          # SQLAlchemy URL; default: a SQLite file
    admin_key: str | None = None         # None: one is created on first start and printed
    limits: Limits = field(default_factory=Limits)
    resume_jobs: bool = True
    #: FSPO models a fit may name (``fspo:NAME``): name -> model or run folder
    fspo_models: dict[str, str] = field(default_factory=dict)

    def database_url(self) -> str:
        if self.database:
            return self.database
        path = settings.home() / "service" / "personalign.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite_url(path)


# ---- errors -------------------------------------------------------------------------------
def error_body(message: str, kind: str, param: str | None = None, code: str | None = None,
               request_id: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code,
                      "request_id": request_id}}


def request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def _status(exc: PersonalignError, openai_route: bool) -> tuple[int, str, str | None]:
    if isinstance(exc, AuthError):
        return 401, "authentication_error", "invalid_api_key"
    if isinstance(exc, ForbiddenError):
        return 403, "permission_error", "forbidden"
    if isinstance(exc, NotFoundError):
        return 404, "not_found_error", "not_found"
    if isinstance(exc, ConflictError):
        return 409, "conflict_error", "conflict"
    if isinstance(exc, LimitError):
        return exc.status, ("rate_limit_error" if exc.status == 429 else
                            "invalid_request_error"), "limit_exceeded"
    if isinstance(exc, ModelError):
        return 503, "server_error", "model_unavailable"
    return (400 if openai_route else 422), "invalid_request_error", "invalid_value"


def _field(loc: tuple) -> str:
    # pydantic names the branch of a union or a validator in the location: not a field
    parts = [str(p) for p in loc if p != "body" and not (
        isinstance(p, str) and ("[" in p or "(" in p))]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


class BodyLimit:
    """Refuses bodies over ``max_bytes`` (by Content-Length, and by counting when chunked)
    before the app reads them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = JSONResponse(error_body(
            f"request body is larger than {self.max_bytes} bytes", "invalid_request_error",
            None, "body_too_large", scope.get("state", {}).get("request_id")), status_code=413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await too_big(scope, receive, send)
        seen, refused = 0, False

        async def counted():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Answer now; the app sees a client that went away, and anything it
                    # still sends is dropped.
                    refused = True
                    await too_big(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded_send)


class RequestIds:
    """Gives each request an id (``x-request-id``), logs one line per request without user
    ids or text, and turns any unexpected error into a 500 in the OpenAI error shape (its
    traceback logged here only), so the connection stays usable."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = "req_" + uuid.uuid4().hex[:20]
        scope.setdefault("state", {})["request_id"] = rid
        started, status, t0 = False, 500, time.perf_counter()

        async def tagged(message):
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception:
            log.exception("request %s failed", rid)
            if not started:
                await JSONResponse(error_body(
                    "internal error; the server's log has the details under this request id",
                    "server_error", None, "internal_error", rid), status_code=500,
                    headers={"x-request-id": rid})(scope, receive, send)
                status = 500
        finally:
            route = getattr(scope.get("route"), "path", None) or "(no route)"
            log.info("%s %s %s %d %.0f ms", rid, scope.get("method"), route, status,
                     1000 * (time.perf_counter() - t0))


# ---- input checks the schemas cannot express (limits are configurable) ----------------------
def _text(value: str, name: str, limits: Limits) -> str:
    if not value.strip():
        raise DataError("empty", field=name)
    if len(value) > limits.max_text_chars:
        raise DataError(f"{len(value)} characters; at most {limits.max_text_chars}", field=name)
    return value


def _question(q, where: str, limits: Limits) -> tuple[str, tuple[str, ...]]:
    _text(q.question, f"{where}.question", limits)
    if len(q.options) > limits.max_options:
        raise DataError(f"{len(q.options)} options; at most {limits.max_options}",
                        field=f"{where}.options")
    options = require_options(q.options, "", None, f"{where}.options")  # the loaders' rules
    for i, o in enumerate(options):
        _text(o, f"{where}.options[{i}]", limits)
    return q.question, options


def _opinions(body: OpinionsIn, limits: Limits) -> list[Opinion]:
    out = []
    for i, o in enumerate(body.opinions):
        where = f"opinions[{i}]"
        question, options = _question(o, where, limits)
        if not 0 <= o.answer < len(options):
            raise DataError(f"answer {o.answer} is out of range for {len(options)} options",
                            field=f"{where}.answer")
        out.append(Opinion(question, options, o.answer))
    return out


# ---- the app --------------------------------------------------------------------------------
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
                                     config.fspo_models)
    if service.admin_key_created:
        # Shown once; only its hash is stored.
        print(f"personalign: created the admin API key (shown once): "
              f"{service.admin_key_created}", flush=True)
    limits = config.limits

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()

    app = FastAPI(title="personalign", version="0.2.0", lifespan=lifespan,
                  description="Few-shot personalization of LLMs (Fermi, FSPO) as a service.")
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(RequestIds)  # added last: the outer one, so 413s get an id too
    bearer = HTTPBearer(auto_error=False, description="An API key: the admin's or a user's.")

    async def who(request: Request,
                  creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> Principal:
        # On the event loop (no thread hop per request); a key not yet seen is looked up in
        # the store on a worker thread.
        token = creds.credentials if creds else None
        principal = service.known_key(token)
        if principal is None:
            principal = await run_in_threadpool(service.authenticate, token)
        at = time.monotonic()
        service.rate.check(principal.key_id, at)
        if service.needs_touch(principal, at):
            await run_in_threadpool(service.touch, principal, at)
        return principal

    def is_openai(request: Request) -> bool:
        return request.url.path in OPENAI_PATHS

    @app.exception_handler(PersonalignError)
    async def _project_error(request: Request, exc: PersonalignError):
        status, kind, code = _status(exc, is_openai(request))
        param = getattr(exc, "field", None)
        return JSONResponse(error_body(str(exc), kind, param, code, request_id(request)),
                            status_code=status,
                            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = _field(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message, param = "malformed JSON: " + str(first.get("ctx", {}).get(
                "error", first.get("msg"))), None
        else:
            message = (f"field '{param}': " if param else "") + first.get("msg", "invalid")
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more)"
        return JSONResponse(error_body(message, "invalid_request_error", param or None,
                                       first.get("type"), request_id(request)),
                            status_code=400 if is_openai(request) else 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None,
                                       str(exc.status_code), request_id(request)),
                            status_code=exc.status_code)

    if config.resume_jobs:
        service.resume_jobs()

    # ---- management ------------------------------------------------------------------------
    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "task_model": models.task, "optimizer_model": models.optimizer,
                "database": store.engine.dialect.name}

    @app.post("/v1/users", status_code=201)
    def create_user(body: UserIn, p: Principal = Depends(who)) -> dict:
        service.require_admin(p)
        for k, v in body.profile.items():
            _text(v, f"profile.{k}", limits)
        if body.description is not None:
            _text(body.description, "description", limits)
        key = service.create_user(body.user_id, body.profile, body.description)
        return {"user_id": body.user_id, "api_key": key}

    # ---- keys: only the admin makes them (a leaked key must not mint keys that outlive its
    # revocation); a user lists and revokes their own ---------------------------------------
    @app.get("/v1/users/{user_id}/keys")
    def list_keys(user_id: str, p: Principal = Depends(who)) -> dict:
        return {"user_id": user_id, "keys": service.keys(service.allow(p, user_id))}

    @app.post("/v1/users/{user_id}/keys", status_code=201)
    def new_key(user_id: str, p: Principal = Depends(who)) -> dict:
        service.require_admin(p)
        token, key = service.new_user_key(service.allow(p, user_id))
        return {"user_id": user_id, "api_key": token, "key": key}

    @app.delete("/v1/users/{user_id}/keys/{key_id}")
    def revoke_key(user_id: str, key_id: str, p: Principal = Depends(who)) -> dict:
        return {"user_id": user_id, "revoked": service.revoke_key(service.allow(p, user_id),
                                                                  key_id)}

    @app.post("/v1/users/{user_id}/keys/{key_id}/rotate", status_code=201)
    def rotate_key(user_id: str, key_id: str, p: Principal = Depends(who)) -> dict:
        service.require_admin(p)
        token, key = service.rotate_key(service.allow(p, user_id), key_id)
        return {"user_id": user_id, "api_key": token, "key": key, "revoked": key_id}

    @app.get("/v1/admin/keys")
    def admin_keys(p: Principal = Depends(who)) -> dict:
        service.require_admin(p)
        return {"keys": service.keys(None), "configured": service.admin_configured}

    @app.post("/v1/admin/keys/{key_id}/rotate", status_code=201)
    def rotate_admin_key(key_id: str, p: Principal = Depends(who)) -> dict:
        service.require_admin(p)
        token, key = service.rotate_key(None, key_id)
        return {"api_key": token, "key": key, "revoked": key_id}

    @app.post("/v1/users/{user_id}/opinions")
    def add_opinions(user_id: str, body: OpinionsIn, p: Principal = Depends(who)) -> dict:
        service.allow(p, user_id)
        total = service.add_opinions(user_id, _opinions(body, limits))
        return {"user_id": user_id, "added": len(body.opinions), "opinions": total}

    @app.post("/v1/users/{user_id}/pairs")
    def add_pairs(user_id: str, body: PairsIn, p: Principal = Depends(who)) -> dict:
        service.allow(p, user_id)
        pairs = []
        for i, pair in enumerate(body.pairs):
            pairs.append(tuple(_text(getattr(pair, k), f"pairs[{i}].{k}", limits)
                               for k in ("prompt", "chosen", "rejected")))
        total = service.add_pairs(user_id, pairs)
        return {"user_id": user_id, "added": len(pairs), "pairs": total}

    @app.post("/v1/users/{user_id}/fit", status_code=202)
    def fit(user_id: str, body: FitIn, p: Principal = Depends(who)) -> dict:
        service.allow(p, user_id)
        return service.submit_fit(user_id, body.method, body.preset)

    @app.get("/v1/jobs/{job_id}")
    def job(job_id: str, p: Principal = Depends(who)) -> dict:
        return service.job(p, job_id)

    @app.get("/v1/users/{user_id}")
    def user(user_id: str, p: Principal = Depends(who)) -> dict:
        service.allow(p, user_id)
        return service.personalization_of(user_id)

    @app.get("/v1/users/{user_id}/export")
    def export(user_id: str, p: Principal = Depends(who)) -> dict:
        service.allow(p, user_id)
        return service.export(user_id)

    @app.delete("/v1/users/{user_id}")
    def delete_user(user_id: str, p: Principal = Depends(who)) -> dict:
        service.allow(p, user_id)
        return {"user_id": user_id, "deleted": True, "removed": service.delete_user(user_id)}

    @app.post("/v1/users/{user_id}/answer")
    def answer(user_id: str, body: AnswerIn, p: Principal = Depends(who)) -> dict:
        service.allow(p, user_id)
        questions = [Opinion(*_question(q, f"questions[{i}]", limits), 0)
                     for i, q in enumerate(body.questions)]
        name, answers = service.answer(user_id, questions)
        return {"method": name, "answers": [
            {"choice": a.choice,
             "answer": None if a.choice is None else q.options[a.choice], "prompt": a.prompt}
            for q, a in zip(questions, answers)]}

    # ---- OpenAI-compatible -----------------------------------------------------------------
    def user_of_model(p: Principal, model: str) -> str:
        name, _, user_id = model.partition("/")
        if name != MODEL_PREFIX:
            raise DataError(f"unknown model {model!r}: use '{MODEL_PREFIX}' (your key's user) "
                            f"or '{MODEL_PREFIX}/<user_id>'", field="model")
        if not user_id:
            if p.admin:
                raise DataError(f"the admin key must name the user: "
                                f"'{MODEL_PREFIX}/<user_id>'", field="model")
            user_id = p.user_id or ""
        return service.allow(p, user_id)

    def sampling(body, max_tokens: int | None, default: int) -> SamplingParams:
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        return SamplingParams(n=body.n, temperature=body.temperature,
                              max_tokens=max_tokens or default, stop=stop, top_p=body.top_p,
                              seed=(body.seed or 0) % 2 ** 31)  # what every backend takes

    def check_chat_size(texts: list[str]) -> None:
        total = sum(len(t) for t in texts)
        if total > limits.max_chat_chars:
            raise DataError(f"{total} characters of text; at most {limits.max_chat_chars}",
                            field="messages")

    @app.get("/v1/models")
    def list_models(p: Principal = Depends(who)) -> dict:
        ids = [MODEL_PREFIX] if not p.admin else []
        if p.user_id:
            ids.append(f"{MODEL_PREFIX}/{p.user_id}")
        return {"object": "list", "data": [
            {"id": i, "object": "model", "created": 0, "owned_by": "personalign"} for i in ids]}

    @app.post("/v1/chat/completions")
    def chat(body: ChatIn, request: Request, p: Principal = Depends(who)):
        user_id = user_of_model(p, body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        check_chat_size([m["content"] for m in messages])
        params = sampling(body, body.max_completion_tokens or body.max_tokens, 256)
        top_k = (body.top_logprobs or 0) if body.logprobs else None
        result = service.chat(user_id, messages, params, top_k, stream=body.stream)
        created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_chat_chunks(cid, created, body.model, result, top_k, include_usage),
                        request_id(request))
        usage = _usage(result.prompt_tokens, result.completion_tokens)
        logprobs = [_logprobs_of(t, result, top_k) for t in result.texts]
        return {"id": cid, "object": "chat.completion", "created": created,
                "model": body.model, "personalization": result.personalization,
                "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                             "finish_reason": result.finish[i], "logprobs": logprobs[i]}
                            for i, t in enumerate(result.texts)],
                "usage": usage}

    @app.post("/v1/completions")
    def completions(body: CompletionIn, request: Request, p: Principal = Depends(who)):
        user_id = user_of_model(p, body.model)
        if body.echo:
            raise DataError("echo is not supported by this server", field="echo")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts or not all(x.strip() for x in prompts):
            raise DataError("empty", field="prompt")
        check_chat_size(prompts)
        params = sampling(body, body.max_tokens, 16)
        created, cid = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream and len(prompts) == 1 and body.n == 1:
            result = service.chat(user_id, [{"role": "user", "content": prompts[0]}], params,
                                  body.logprobs, stream=True)
            return _sse(_streamed_completion(cid, created, body.model, result, body.logprobs,
                                             include_usage), request_id(request))
        choices, used_in, used_out, applied = [], 0, 0, None
        for prompt in prompts:
            # A completion prompt is answered as the user's message, personalized alike.
            result = service.chat(user_id, [{"role": "user", "content": prompt}], params,
                                  body.logprobs)
            used_in, used_out = used_in + result.prompt_tokens, used_out + result.completion_tokens
            applied = result.personalization
            for i, text in enumerate(result.texts):
                choices.append({"index": len(choices), "text": text,
                                "finish_reason": result.finish[i],
                                "logprobs": _completion_logprobs(text, result, body.logprobs)})
        usage = _usage(used_in, used_out)
        if body.stream:  # several prompts or samples: generated first, then sent in pieces
            return _sse(_completion_chunks(cid, created, body.model, choices, applied,
                                           usage if include_usage else None),
                        request_id(request))
        return {"id": cid, "object": "text_completion", "created": created, "model": body.model,
                "personalization": applied, "choices": choices, "usage": usage}

    return app


# ---- OpenAI response pieces ------------------------------------------------------------------
def _first_token(text: str, top: list[tuple[str, float]]) -> tuple[str, float]:
    for token, value in top:
        if token and text.startswith(token):
            return token, value
    return top[0]


def _chat_logprobs(text: str, top: list[tuple[str, float]], k: int) -> dict:
    token, value = _first_token(text, top)
    return {"content": [{"token": token, "logprob": value, "bytes": list(token.encode()),
                         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                          for t, v in top[:k]]}]}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _logprobs_of(text: str, result, k: int | None) -> dict | None:
    if k is None or not result.top_logprobs:
        return None
    return _chat_logprobs(text, result.top_logprobs, k)


def _completion_logprobs(text: str, result, k: int | None) -> dict | None:
    if k is None or not result.top_logprobs:
        return None
    token, value = _first_token(text, result.top_logprobs)
    listed: dict[str, float] = {}
    for t, v in result.top_logprobs[:k]:
        listed.setdefault(t, v)
    return {"tokens": [token], "token_logprobs": [value], "top_logprobs": [listed],
            "text_offset": [0]}


def _pieces(text: str) -> list[str]:
    """A finished text in word-sized pieces (what is sent when it was not generated as a
    stream: several samples, or a method that answers in one piece)."""
    out, start = [], 0
    for i in range(1, len(text)):
        if text[i] == " " and text[i - 1] != " ":
            out.append(text[start:i])
            start = i
    out.append(text[start:])
    return [p for p in out if p]


def _own_thread(pieces: Iterator[str]) -> Iterator[str]:
    """``pieces`` drawn on one thread of their own and handed over as they come: a model's
    generator holds its lock and must not hop between the threads that serve a response.
    When the client goes away the thread stops at the next piece."""
    handoff: queue.Queue = queue.Queue()
    gone = threading.Event()
    end = object()

    def draw() -> None:
        try:
            for piece in pieces:
                handoff.put(piece)
                if gone.is_set():
                    break
        except BaseException as e:  # re-raised on the serving side
            handoff.put(e)
        finally:
            pieces.close()
            handoff.put(end)

    threading.Thread(target=draw, name="stream", daemon=True).start()
    try:
        while (item := handoff.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        gone.set()


def _sse(events: Iterator[dict], rid: str | None) -> StreamingResponse:
    def body() -> Iterator[str]:
        try:
            for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except Exception as e:  # the status line is sent: the error goes as an event
            log.exception("stream of request %s failed", rid)
            message = str(e) if isinstance(e, PersonalignError) else "internal error"
            yield f"data: {json.dumps(error_body(message, 'server_error', None, None, rid))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _text_pieces(result) -> Iterator[tuple[int, str | None]]:
    """(choice index, piece) of each answer, then (index, None) as each one ends: the model's
    own pieces when it streamed, else the finished texts cut into words."""
    if result.pieces is not None:
        for piece in _own_thread(result.pieces):
            yield 0, piece
        yield 0, None
        return
    for i, text in enumerate(result.texts):
        for piece in _pieces(text):
            yield i, piece
        yield i, None


def _chat_chunks(cid: str, created: int, model: str, result, top_k: int | None,
                 include_usage: bool) -> Iterator[dict]:
    def chunk(choices: list[dict], **extra) -> dict:
        return {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": choices, **extra}

    first = True
    for i, piece in _text_pieces(result):
        if first:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None, "logprobs": None}],
                        personalization=result.personalization)
        if piece is None:
            yield chunk([{"index": i, "delta": {}, "finish_reason": result.finish[i],
                          "logprobs": None}])
            first = True
            continue
        yield chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None,
                      "logprobs": _logprobs_of(piece, result, top_k) if first else None}])
        first = False
    if include_usage:
        yield chunk([], usage=_usage(result.prompt_tokens, result.completion_tokens))


def _streamed_completion(cid: str, created: int, model: str, result, k: int | None,
                         include_usage: bool) -> Iterator[dict]:
    def chunk(items: list[dict], **extra) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": items, **extra}

    first = True
    for _, piece in _text_pieces(result):
        if piece is None:
            yield chunk([{"index": 0, "text": "", "finish_reason": result.finish[0],
                          "logprobs": None}])
            continue
        yield chunk([{"index": 0, "text": piece, "finish_reason": None,
                      "logprobs": _completion_logprobs(piece, result, k) if first else None}],
                    personalization=result.personalization)
        first = False
    if include_usage:
        yield chunk([], usage=_usage(result.prompt_tokens, result.completion_tokens))


def _completion_chunks(cid: str, created: int, model: str, choices: list[dict], applied,
                       usage: dict | None) -> Iterator[dict]:
    def chunk(items: list[dict], **extra) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": items, **extra}

    for c in choices:
        pieces = _pieces(c["text"]) or [""]
        for j, piece in enumerate(pieces):
            last = j == len(pieces) - 1
            yield chunk([{"index": c["index"], "text": piece,
                          "finish_reason": c["finish_reason"] if last else None,
                          "logprobs": c["logprobs"] if j == 0 else None}],
                        personalization=applied)
    if usage is not None:
        yield chunk([], usage=usage)


__all__ = ["ServiceConfig", "create_app"]
