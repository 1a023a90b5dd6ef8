"""The personalization service's domain: users and their inputs, fit jobs, deletion, chat;
keys live in :mod:`.keys`, the fit queue and a fit's observed models in :mod:`.jobs`.

It raises the project's errors (``DataError``, ``NotFoundError``, ...) and the service's own
(:mod:`personalign.serving.errors`); only the HTTP layer (:mod:`personalign.serving.http`)
maps them to status codes. Every user's method is fit on that user's data alone, through the
method protocol (``build`` / ``check_data`` / ``fit`` / ``describe`` / ``saved`` /
``from_saved`` / ``chat_plan``), so every served method (Fermi, FSPO, any registered one) is
served alike.

User data never enters the shared LLM call cache: the service's models run uncached
(:class:`UncachedModels`), so deleting a user's rows, personalization and in-memory vectors
leaves nothing derived from them behind.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import delete, func, select

from personalign.methods import MethodSettings, build, from_saved, method_class, split_spec
from personalign.runtime.data.records import Opinion, PreferencePair, User
from personalign.runtime.errors import (
    ConfigError,
    DataError,
    NotFoundError,
    PersonalignError,
)
from personalign.runtime.llm.base import LLM
from personalign.runtime.llm.types import Message, SamplingParams
from personalign.runtime.personalizer import Personalizer, SharedModels, last_user_text
from personalign.serving.errors import AuthError, ConflictError, ForbiddenError, LimitError
from personalign.service.jobs import Cancelled, FitQueue, UncachedModels, _Watch
from personalign.service.keys import KeyRing, Principal, RateLimiter, key_dict
from personalign.serving.openai_format import Chat, finish_reason, streamed
from personalign.service.store import Store
from personalign.service.store.models import (
    ApiKeyRow,
    DeletionLogRow,
    JobRow,
    OpinionRow,
    PersonalizationRow,
    PreferencePairRow,
    UserRow,
    now,
    user_row,
)

log = logging.getLogger(__name__)

USER_ID = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9_.-]{1,128}")  # "." and ".." are not ids
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ACTIVE = ("queued", "running")
MAX_RESUMES = 2


@dataclass
class ServiceLimits:
    """What one user or key may send and keep (the run budget's limits are
    :class:`personalign.runtime.budget.Limits`)."""

    max_body_bytes: int = 1_000_000
    max_opinions_per_user: int = 500
    max_pairs_per_user: int = 500
    max_text_chars: int = 4_000       # a question, an option, a prompt or a response
    max_options: int = 26
    max_chat_chars: int = 32_000      # all message text of one chat request
    requests_per_minute: int = 600    # per API key
    max_active_fits_per_user: int = 2  # queued or running; more is 429


#: the methods a service serves unless its operator says otherwise
SERVED_METHODS = ("fermi", "fspo")


def check_user_id(user_id: str) -> str:
    if not isinstance(user_id, str) or not USER_ID.fullmatch(user_id):
        raise DataError("must be 1-128 characters from letters, digits, '_', '-', '.' "
                        "(not '.' or '..')", field="user_id")
    return user_id


class PersonalizationService:
    """Owns the store, the models (loaded once) and the background fit queue."""

    def __init__(self, store: Store, models: SharedModels, limits: ServiceLimits | None = None,
                 admin_key: str | None = None, fspo_models: dict[str, str] | None = None,
                 methods: Sequence[str] = SERVED_METHODS):
        self.store = store
        self.models = models
        self.methods = self._served_methods(methods, fspo_models or {})
        self.limits = limits or ServiceLimits()
        self.rate = RateLimiter(self.limits.requests_per_minute)
        self._load_lock = threading.Lock()
        self._user_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._cancel: dict[str, threading.Event] = {}
        # In-process caches of keys and loaded personalizations: this process is the only
        # writer (fits and deletions run here), and it drops entries as it changes them.
        self._personalizers: dict[str, tuple[Any, Personalizer]] = {}
        # Texts a user sent to be answered (never stored, but a retrieval may have embedded
        # them): forgotten with the user.
        self._asked: dict[str, set[str]] = defaultdict(set)
        self.keys = KeyRing(store, admin_key)
        self._queue = FitQueue(self._run)
        self._model_locks: dict[int, threading.Lock] = defaultdict(threading.Lock)

    def allow(self, who: Principal, user_id: str) -> str:
        check_user_id(user_id)
        if not who.admin and who.user_id != user_id:
            raise ForbiddenError("this key does not reach that user's data")
        return user_id

    def require_admin(self, who: Principal) -> None:
        if not who.admin:
            raise ForbiddenError("only the admin key may do this")

    # ---- users and their inputs ---------------------------------------------------------
    def create_user(self, user_id: str, profile: dict[str, str], description: str | None
                    ) -> str:
        check_user_id(user_id)
        with self.store.session() as s:
            if s.get(UserRow, user_id) is not None:
                raise ConflictError(f"user {user_id!r} exists")
            s.add(UserRow(id=user_id, profile=dict(profile), description=description))
            s.flush()
            return self.keys.add(s, "user", user_id)[0]

    def add_opinions(self, user_id: str, opinions: Sequence[Opinion]) -> int:
        return self._add_rows(
            user_id, OpinionRow, self.limits.max_opinions_per_user, "opinions", "opinions",
            [OpinionRow(user_id=user_id, question=o.question, options=list(o.options),
                        answer=o.answer) for o in opinions])

    def add_pairs(self, user_id: str, pairs: Sequence[tuple[str, str, str]]) -> int:
        return self._add_rows(
            user_id, PreferencePairRow, self.limits.max_pairs_per_user, "preference pairs",
            "pairs", [PreferencePairRow(user_id=user_id, prompt=p, chosen=c, rejected=r)
                      for p, c, r in pairs])

    def _add_rows(self, user_id: str, table, limit: int, what: str, field: str,
                  rows: list) -> int:
        """Store a user's new rows unless they would pass the per-user limit; the new count."""
        with self._user_locks[user_id], self.store.session() as s:
            user_row(s, user_id)
            have = s.scalar(select(func.count()).select_from(table)
                            .where(table.user_id == user_id)) or 0
            if have + len(rows) > limit:
                raise LimitError(f"a user may have at most {limit} {what} ({have} stored, "
                                 f"{len(rows)} sent)", field=field)
            s.add_all(rows)
            return have + len(rows)

    def _user_record(self, s, user_id: str) -> User:
        row = user_row(s, user_id)
        opinions = s.scalars(select(OpinionRow).where(OpinionRow.user_id == user_id)
                             .order_by(OpinionRow.id)).all()
        pairs = s.scalars(select(PreferencePairRow).where(PreferencePairRow.user_id == user_id)
                          .order_by(PreferencePairRow.id)).all()
        return User(user_id, dict(row.profile or {}),
                    tuple(Opinion(o.question, tuple(o.options), o.answer) for o in opinions),
                    description=row.description,
                    pairs=tuple(PreferencePair(user_id, p.prompt, p.chosen, p.rejected)
                                for p in pairs))

    def export(self, user_id: str) -> dict[str, Any]:
        """Everything the store holds about the user (keys as ids only)."""
        with self.store.session() as s:
            user = self._user_record(s, user_id)
            row = s.get(UserRow, user_id)
            keys = s.scalars(select(ApiKeyRow).where(ApiKeyRow.user_id == user_id)).all()
            jobs = s.scalars(select(JobRow).where(JobRow.user_id == user_id)
                             .order_by(JobRow.created_at)).all()
            pers = s.get(PersonalizationRow, user_id)
            return {"user_id": user_id, "created_at": row.created_at.isoformat(),
                    "profile": user.profile, "description": user.description,
                    "opinions": [{"question": o.question, "options": list(o.options),
                                  "answer": o.answer} for o in user.opinions],
                    "pairs": [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                              for p in user.pairs],
                    "api_keys": [key_dict(k) for k in keys],
                    "jobs": [self._job_dict(j) for j in jobs],
                    "personalization": None if pers is None else {
                        "method": pers.method, "job_id": pers.job_id,
                        "updated_at": pers.updated_at.isoformat(), "saved": pers.saved}}

    # ---- fit jobs ------------------------------------------------------------------------
    def loaded(self) -> SharedModels:
        """The shared models, loaded once (the first fit or chat pays for it)."""
        with self._load_lock:
            self.models.task_llm, self.models.optimizer_llm, self.models.embedding
        return self.models

    def _served_methods(self, methods: Sequence[str], fspo_models: dict[str, str]
                        ) -> dict[str, str]:
        """What a request may name as its method, and the spec each runs: the registered
        methods the operator serves (Fermi and FSPO on the base model unless told), and each
        FSPO model the operator registered, by name (a request never names a path or a URL).
        An unknown method or a model that does not load stops the start."""
        served = {}
        for name in methods:
            if split_spec(name)[1] is not None:
                raise ConfigError(f"served method {name!r}: a name, no argument")
            method_class(name)  # an unknown name stops the start
            served[name] = name
        for name, folder in fspo_models.items():
            if not MODEL_NAME.fullmatch(name):
                raise ConfigError(f"FSPO model name {name!r}: letters, digits, '_', '-', '.'")
            spec = f"fspo:{folder}"
            try:
                build(spec, self.models, MethodSettings())
            except (PersonalignError, ValueError, KeyError, OSError) as e:
                raise ConfigError(f"FSPO model {name!r} ({folder}) does not load: {e}") from None
            served[f"fspo:{name}"] = spec
        return served

    def submit_fit(self, user_id: str, method: str, preset: str) -> dict[str, Any]:
        if method not in self.methods:
            raise DataError(f"unknown method {method!r}; this server serves: "
                            f"{', '.join(self.methods)}", field="method")
        fitted = build(self.methods[method], self.models, MethodSettings(preset=preset))
        with self._user_locks[user_id], self.store.session() as s:
            user = self._user_record(s, user_id)
            active = s.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.user_id == user_id, JobRow.status.in_(ACTIVE))) or 0
            if active >= self.limits.max_active_fits_per_user:
                raise LimitError(f"{active} fits of this user are queued or running; at most "
                                 f"{self.limits.max_active_fits_per_user}: wait for one to end",
                                 status=429)
            fitted.check_data(user)
            job = JobRow(id=uuid.uuid4().hex, user_id=user_id, method=method, preset=preset,
                         status="queued", stage="queued", progress=0.0, summary={})
            s.add(job)
        self._enqueue(job.id, user_id)
        return self._job_dict(job)

    def _enqueue(self, job_id: str, user_id: str) -> None:
        self._cancel[job_id] = threading.Event()
        self._queue.put(user_id, job_id)

    def _update(self, job_id: str, **values: Any) -> None:
        with self.store.session() as s:
            job = s.get(JobRow, job_id)
            if job is not None:
                for k, v in values.items():
                    setattr(job, k, v)
                job.updated_at = now()

    def _run(self, job_id: str) -> None:
        cancelled = self._cancel.get(job_id) or threading.Event()
        try:
            with self.store.session() as s:
                job = s.get(JobRow, job_id)
                if job is None or job.status not in ACTIVE:
                    return  # deleted with its user, or finished
                user = self._user_record(s, job.user_id)
                job.status, job.stage, job.progress = "running", "loading models", 0.05
                job.attempts += 1
                job.updated_at = now()
                served, preset = job.method, job.preset
                spec = self.methods.get(served)
                if spec is None:
                    raise DataError(f"method {served!r} is no longer served here")
                resumed = bool((job.summary or {}).get("resumed"))
            self.loaded()
            if cancelled.is_set():
                raise Cancelled()
            self._update(job_id, stage="fitting", progress=0.1)
            watch = _Watch(job_id, cancelled, self._update)
            models = watch.models(self.models)
            method = build(spec, models, MethodSettings(preset=preset))
            watch.expect(method.fit_rounds)
            with models.observing(watch):
                method.fit(user)
            method.models = self.models  # what is saved and served uses the real models
            held, saved = method.describe(), method.saved()
            summary: dict[str, Any] = {"method": method.name, "resumed": resumed}
            if held.prompts:
                summary.update(prompts=len(held.prompts),
                               best_train_score=max(p.train_score for p in held.prompts),
                               collapsed=held.collapsed)
            if held.shots is not None:
                summary["shots"] = held.shots
            # Written back under the user's lock, and only if the user still exists and the
            # job was not cancelled: a deletion that ran meanwhile wins.
            with self._user_locks[user.user_id], self.store.session() as s:
                job = s.get(JobRow, job_id, with_for_update=True)
                if cancelled.is_set() or job is None or s.get(UserRow, user.user_id) is None:
                    raise Cancelled()
                s.merge(PersonalizationRow(user_id=user.user_id, method=served,
                                           saved=saved, job_id=job_id, updated_at=now()))
                job.status, job.stage, job.progress, job.summary = "done", "done", 1.0, summary
                job.updated_at = now()
                self._personalizers.pop(user.user_id, None)
        except Cancelled:
            log.info("fit %s cancelled: its user was deleted", job_id)
        except Exception as e:  # reported through the job, never lost in a thread
            log.error("fit %s failed: %s: %s", job_id, type(e).__name__, e)
            reason = str(e) if isinstance(e, PersonalignError) else f"{type(e).__name__}: {e}"
            self._update(job_id, status="failed", stage="failed", error=reason)
        finally:
            self._cancel.pop(job_id, None)

    def resume_jobs(self) -> list[str]:
        """After a restart: jobs that were queued or running run again (from the start); a
        job interrupted too often is marked failed with the reason. None is lost."""
        resumed: list[tuple[str, str]] = []
        with self.store.session() as s:
            for job in s.scalars(select(JobRow).where(JobRow.status.in_(ACTIVE))
                                 .order_by(JobRow.created_at)).all():
                if job.attempts >= MAX_RESUMES:
                    job.status, job.stage = "failed", "failed"
                    job.error = (f"interrupted by a service restart {job.attempts} times; "
                                 "not resumed again")
                else:
                    job.status, job.stage, job.progress = "queued", "resumed after restart", 0.0
                    job.summary = {**(job.summary or {}), "resumed": True}
                    resumed.append((job.id, job.user_id))
                job.updated_at = now()
        for job_id, user_id in resumed:
            self._enqueue(job_id, user_id)
        return [job_id for job_id, _ in resumed]

    @staticmethod
    def _job_dict(job: JobRow) -> dict[str, Any]:
        return {"job_id": job.id, "user_id": job.user_id, "method": job.method,
                "preset": job.preset, "status": job.status, "stage": job.stage,
                "progress": job.progress, "attempts": job.attempts, "error": job.error,
                "summary": job.summary or {}, "created_at": job.created_at.isoformat(),
                "updated_at": job.updated_at.isoformat()}

    def job(self, who: Principal, job_id: str) -> dict[str, Any]:
        with self.store.session() as s:
            job = s.get(JobRow, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r}")
            self.allow(who, job.user_id)
            return self._job_dict(job)

    # ---- deletion ------------------------------------------------------------------------
    def delete_user(self, user_id: str) -> dict[str, Any]:
        """Remove every row of the user, their personalization and in-memory state; a running
        fit of theirs is cancelled first (its result is discarded, never written back)."""
        with self._user_locks[user_id]:
            with self.store.session() as s:
                user = self._user_record(s, user_id)
                s.get(UserRow, user_id, with_for_update=True)
                active = s.scalars(select(JobRow.id).where(JobRow.user_id == user_id,
                                                           JobRow.status.in_(ACTIVE))).all()
                for job_id in active:
                    if job_id in self._cancel:
                        self._cancel[job_id].set()
                removed: dict[str, Any] = {}
                for name, table in (("api_keys", ApiKeyRow), ("opinions", OpinionRow),
                                    ("preference_pairs", PreferencePairRow),
                                    ("personalizations", PersonalizationRow),
                                    ("jobs", JobRow)):
                    removed[name] = s.execute(delete(table).where(
                        table.user_id == user_id)).rowcount
                removed["users"] = s.execute(delete(UserRow).where(
                    UserRow.id == user_id)).rowcount
                removed["cancelled_jobs"] = len(active)
            self._personalizers.pop(user_id, None)
            self.keys.forget(lambda p: p.user_id == user_id)
            texts = {t for o in user.opinions for t in (o.question, *o.options)} | {
                t for p in user.pairs for t in (p.prompt, p.chosen, p.rejected)} | \
                self._asked.pop(user_id, set())
            embedder = self.models.loaded_embedder()
            # A text holding one of the user's own (a retrieval query, a prompt) goes; short
            # shared ones ("Yes", "Strongly agree") go only as themselves, not inside others.
            own = [x for x in texts if len(x) >= 24]
            removed["embedding_cache_entries"] = embedder.forget(
                lambda t: t in texts or any(x in t for x in own)) \
                if embedder is not None and texts else 0
            removed["llm_cache_entries"] = 0  # the service's models run uncached
            removed["files"] = 0              # the store holds everything; no per-user files
            with self.store.session() as s:
                s.add(DeletionLogRow(id=uuid.uuid4().hex, removed=removed))
        return removed

    # ---- answering -----------------------------------------------------------------------
    def personalizer(self, user_id: str) -> Personalizer:
        cached = self._personalizers.get(user_id)
        if cached is not None:
            return cached[1]
        with self._user_locks[user_id]:  # a deletion cannot interleave with the caching
            cached = self._personalizers.get(user_id)
            if cached is not None:
                return cached[1]
            with self.store.session() as s:
                user_row(s, user_id)
                row = s.get(PersonalizationRow, user_id)
                if row is None:
                    raise NotFoundError(f"user {user_id!r} has no personalization yet: "
                                        "start a fit")
                stamp, saved = row.updated_at, row.saved
            method = from_saved(saved, self.loaded(), source=f"personalization of {user_id!r}")
            self._personalizers[user_id] = (stamp, method)
            return method

    def personalization_of(self, user_id: str) -> dict[str, Any]:
        held = self.personalizer(user_id).describe()
        out: dict[str, Any] = {"user_id": user_id, "method": held.method}
        if held.prompts is not None:
            out["prompts"] = [{"prompt": p.prompt, "train_score": p.train_score}
                              for p in held.prompts]
        if held.model is not None:
            out["model"] = self._served_as(user_id)
        if held.shots is not None:
            out["shots"] = held.shots
        if held.description is not None:
            out["description"] = held.description
        return out

    def _served_as(self, user_id: str) -> str | None:
        """The method the user was fit with, by the name a request uses (never a folder)."""
        with self.store.session() as s:
            row = s.get(PersonalizationRow, user_id)
            return None if row is None else row.method

    def answer(self, user_id: str, questions: Sequence[Opinion]) -> tuple[str, list]:
        method = self.personalizer(user_id)
        self._asked[user_id].update(t for q in questions for t in (q.question, *q.options))
        with self._serial(method.models.task_llm):
            return method.name, method.predict(questions)

    def chat(self, user_id: str, messages: list[Message], params: SamplingParams,
             top_logprobs: int | None = None, stream: bool = False) -> Chat:
        """The user's personalization applied to a chat, as the method's
        :meth:`~personalign.runtime.personalizer.Personalizer.chat_plan` says (Fermi: the
        RoP-selected prompt for the last user message as the system message; FSPO: the user's
        shots before it, answered by the FSPO model). ``stream`` (one choice) returns the
        answer's pieces as the model writes them, in ``Chat.pieces``."""
        method = self.personalizer(user_id)
        query = last_user_text(messages)
        if not query:
            raise DataError("a chat needs at least one user message", field="messages")
        self._asked[user_id].add(query)
        plan = method.chat_plan(messages)
        applied: dict[str, Any] = {"user_id": user_id, "method": method.name, **plan.applied}
        if method.describe().model is not None:
            applied["model"] = self._served_as(user_id)  # by its served name, never a folder
        llm, params = plan.llm, plan.sampling(params)
        top = None
        if top_logprobs is not None and hasattr(llm, "next_token_logprobs"):  # the engine's
            top = llm.next_token_logprobs(plan.prompt, max(1, top_logprobs))
        if stream and params.n == 1 and not plan.strip:
            return streamed(llm, plan.prompt, params, Chat([], 0, 0, applied, top))
        # Per-request usage comes with the texts, so requests run concurrently (a local
        # model serializes its own forwards; a remote server batches them).
        texts, used_in, used_out = llm.generate_one(plan.prompt, params)
        texts = [plan.finish(t) for t in texts]
        return Chat(texts, used_in, used_out, applied, top,
                    [finish_reason(llm, t, params) for t in texts])

    def _serial(self, llm: LLM):
        """One request at a time where usage is read as a difference of the model's
        counters (``respond``, ``predict``)."""
        return self._model_locks[id(llm)]

    def close(self) -> None:
        for event in list(self._cancel.values()):
            event.set()
        self._queue.close()


__all__ = ["AuthError", "ForbiddenError", "ConflictError", "LimitError", "ServiceLimits",
           "PersonalizationService", "Principal", "UncachedModels", "ConfigError"]
