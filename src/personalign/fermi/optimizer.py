"""The Fermi estimator: per-user prompt optimization with mis-aligned responses, and RoP.

    fermi = Fermi(FermiConfig(), task_llm, optimizer_llm, embedder)
    fermi.fit(user)                     # or fit(opinions, profile)
    choices = fermi.predict(questions)  # option indices (None when unparseable)
    fermi.save("user.json"); Fermi.load("user.json", task_llm, optimizer_llm, embedder)

With ``config.mode == "opro"`` the same loop runs with a memory of (text, score) only; its
prediction uses the best prompt (no RoP), as does ``predict(..., use_rop=False)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from personalign.fermi import rop
from personalign.fermi.config import PROFILE_INSTRUCTION, TASK_INSTRUCTION, FermiConfig
from personalign.fermi.memory import Candidate, Memory
from personalign.fermi.meta_prompt import build_meta_prompt
from personalign.fermi.parsing import parse_prompt
from personalign.fermi.tasks import is_misaligned, question_block, sample_score
from personalign.runtime.data.opinionqa import profile_text
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.data.splits import derive_seed
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.llm.base import LLM
from personalign.runtime.llm.types import ChoiceItem, SamplingParams
from personalign.runtime.storage import atomic_write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# What can go wrong with an optimizer reply; every key is reported (zero or not).
FAILURE_KEYS = ("no_brackets_fallback", "unclosed_bracket", "unparseable", "empty",
                "duplicate", "too_long", "retries", "short_iterations")


def initial_prompt(profile: str) -> str:
    """The profile prompt of the spec, or the plain task prompt when there is no profile."""
    if profile:
        return f"A person can be described as follows: {profile}. {PROFILE_INSTRUCTION}"
    return TASK_INSTRUCTION


def choice_item(prompt: str, question: Opinion) -> ChoiceItem:
    """The scored item: the candidate prompt is the shared prefix (encoded once per prompt)."""
    return ChoiceItem(prefix=f"{prompt}\n\n" if prompt else "",
                      prompt=question_block(question.question, question.options),
                      options=tuple(question.options))


def _normalize(prompt: str) -> str:
    return " ".join(prompt.casefold().split())


def _as_question(q: Any, where: str) -> Opinion:
    if isinstance(q, Opinion):
        return q
    if isinstance(q, dict) and "question" in q and "options" in q:
        return Opinion(question=str(q["question"]), options=tuple(map(str, q["options"])),
                       answer=int(q.get("answer", 0) or 0), qid=q.get("qid"))
    raise DataError(f"{where}: expected an Opinion or a dict with question and options")


@dataclass
class PoolPrompt:
    """A final prompt with its per-sample scores on the cached training questions."""

    prompt: str
    train_score: float
    correctness: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "train_score": self.train_score,
                "correctness": list(self.correctness)}


@dataclass
class FitResult:
    user_id: str
    history: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=lambda: {k: 0 for k in FAILURE_KEYS})
    counts: dict[str, int] = field(default_factory=lambda: {"optimizer_replies": 0,
                                                            "accepted": 0,
                                                            "prompts_scored": 0})

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "history": self.history,
                "failures": dict(self.failures), "counts": dict(self.counts)}


class Fermi:
    """Per-user prompt optimizer (scikit-learn style: configure, fit, predict, save, load)."""

    def __init__(self, config: FermiConfig | None = None, task_llm: LLM | None = None,
                 optimizer_llm: LLM | None = None, embedder=None):
        self.config = config or FermiConfig()
        self.task_llm = task_llm
        self.optimizer_llm = optimizer_llm
        self.embedder = embedder
        self.pool: list[PoolPrompt] = []
        self.train_questions: list[str] = []
        self.profile: str = ""
        self.user_id: str = ""
        self.result: FitResult | None = None
        self.memory: Memory | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def fitted(self) -> bool:
        return bool(self.pool)

    def _phase(self, llm: LLM, name: str):
        return llm.phase(f"{self.config.mode}/{name}") if llm is not None \
            else contextlib.nullcontext()

    def _require(self, llm: LLM | None, what: str) -> LLM:
        if llm is None:
            raise ConfigError(f"Fermi needs a {what} LLM for this step")
        return llm

    def _score_prompts(self, prompts: Sequence[str], questions: Sequence[Opinion],
                       iteration: int) -> list[Candidate]:
        """Score every prompt on every question with the task model (one batched call)."""
        llm = self._require(self.task_llm, "task")
        items = [choice_item(p, q) for p in prompts for q in questions]
        results = llm.score_choices(items, method=self.config.scoring_method)
        out, n = [], len(questions)
        tau = self.config.threshold
        for j, prompt in enumerate(prompts):
            preds = [results[j * n + i].choice for i in range(n)]
            scores = [sample_score(self.config.task_type, preds[i], q.answer)
                      for i, q in enumerate(questions)]
            mis = tuple(i for i, s in enumerate(scores) if is_misaligned(s, tau))
            out.append(Candidate(prompt=prompt, score=float(np.mean(scores)) if scores else 0.0,
                                 misaligned=mis, predictions=tuple(preds),
                                 iteration=iteration))
        return out

    def _propose(self, meta_prompt: str, iteration: int, seen: set[str],
                 result: FitResult) -> list[str]:
        """Up to K new prompts: K samples, then bounded retries for the ones that failed."""
        llm = self._require(self.optimizer_llm, "optimizer")
        cfg = self.config
        accepted: list[str] = []
        for attempt in range(cfg.max_retries + 1):
            need = cfg.num_candidates - len(accepted)
            if need <= 0:
                break
            if attempt:
                result.failures["retries"] += 1
            primed = cfg.prime_bracket and callable(getattr(llm, "render", None))
            params = SamplingParams(
                n=need, temperature=cfg.optimizer_temperature, max_tokens=cfg.optimizer_max_tokens,
                stop=("]",) if primed else (),
                seed=derive_seed(cfg.seed, self.user_id, iteration, attempt))
            messages = [{"role": "user", "content": meta_prompt}]
            prompt = llm.render(messages) + "[" if primed else messages
            replies = llm.generate([prompt], params)[0]
            for reply in replies:
                result.counts["optimizer_replies"] += 1
                if primed:
                    # The reply continues after "["; a reply that stopped before its token
                    # limit was cut at the closing "]" (or ended), one at the limit is unclosed.
                    closed = llm.count_tokens(reply) < cfg.optimizer_max_tokens - 1
                    reply = "[" + reply + ("]" if closed and "]" not in reply else "")
                parsed = parse_prompt(reply, cfg.parse_fallback)
                if parsed.how == "fallback":
                    result.failures["no_brackets_fallback"] += 1
                elif parsed.how == "unclosed":
                    result.failures["unclosed_bracket"] += 1
                text = parsed.text
                if text is None:
                    result.failures["unparseable" if cfg.parse_fallback == "drop" and reply
                                    and reply.strip() else "empty"] += 1
                    continue
                if len(text) < cfg.min_prompt_chars:
                    result.failures["empty"] += 1
                    continue
                if len(text) > cfg.max_prompt_chars:
                    result.failures["too_long"] += 1
                    continue
                key = _normalize(text)
                if key in seen:
                    result.failures["duplicate"] += 1
                    continue
                seen.add(key)
                accepted.append(text)
        if len(accepted) < cfg.num_candidates:
            result.failures["short_iterations"] += 1
        result.counts["accepted"] += len(accepted)
        return accepted

    # ------------------------------------------------------------------ fit
    def fit(self, user_or_opinions: User | Iterable[Opinion],
            profile: dict[str, str] | str | None = None, *, user_id: str | None = None,
            progress: bool = False) -> "Fermi":
        cfg = self.config
        if isinstance(user_or_opinions, User):
            opinions = list(user_or_opinions.opinions)
            profile = user_or_opinions.profile if profile is None else profile
            user_id = user_id or user_or_opinions.user_id
        else:
            opinions = [_as_question(o, f"opinion {i}") for i, o in enumerate(user_or_opinions)]
        if len(opinions) < 2:
            raise DataError(f"Fermi needs at least 2 opinions to fit, got {len(opinions)}")
        self.profile = profile_text(profile) if isinstance(profile, dict) else (profile or "")
        self.user_id = user_id or "user"
        n_opt = min(len(opinions) - 1, max(1, round(len(opinions) * cfg.optimization_fraction))) \
            if cfg.optimization_fraction < 1.0 else len(opinions)
        opt, demo = opinions[:n_opt], opinions[n_opt:]
        result = FitResult(self.user_id)
        memory = Memory(cfg.memory_size)
        first = initial_prompt(self.profile)
        seen = {_normalize(first)}
        with self._phase(self.task_llm, "score"):
            initial = self._score_prompts([first], opt, 0)
        memory.extend(initial)
        result.counts["prompts_scored"] += 1
        generated: list[Candidate] = []
        result.history.append({"iteration": 0, "best_score": memory.best_score,
                               "scores": [c.score for c in initial], "accepted": 1})
        bar = tqdm(range(1, cfg.iterations + 1), desc=f"{cfg.mode} {self.user_id}",
                   disable=not progress, leave=False)
        for t in bar:
            entries = memory.ascending()
            reference = memory.reference(cfg.reference_entry) if cfg.mode == "fermi" else None
            meta = build_meta_prompt(profile=self.profile, questions=opt, demonstrations=demo,
                                     entries=entries, reference=reference, mode=cfg.mode,
                                     failure_case_cap=cfg.failure_case_cap)
            with self._phase(self.optimizer_llm, "optimize"):
                prompts = self._propose(meta, t, seen, result)
            with self._phase(self.task_llm, "score"):
                cands = self._score_prompts(prompts, opt, t) if prompts else []
            result.counts["prompts_scored"] += len(cands)
            memory.extend(cands)
            generated.extend(cands)
            result.history.append({"iteration": t, "best_score": memory.best_score,
                                   "scores": [c.score for c in cands], "accepted": len(cands)})
            bar.set_postfix(best=f"{memory.best_score:.2f}")
        bar.close()
        if cfg.final_pool == "memory" or not generated:
            chosen = memory.ranked()
        else:
            chosen = generated[-cfg.num_candidates:]
        self.memory = memory
        self.result = result
        self._cache_pool(chosen, opt, demo)
        return self

    def _cache_pool(self, chosen: Sequence[Candidate], opt: Sequence[Opinion],
                    demo: Sequence[Opinion]) -> None:
        """Per-sample scores of each pool prompt on U_opi (opt part reused, demo scored)."""
        questions = list(opt) + (list(demo) if self.config.rop_include_demo else [])
        extra: list[Candidate] = []
        if self.config.rop_include_demo and demo:
            with self._phase(self.task_llm, "pool"):
                extra = self._score_prompts([c.prompt for c in chosen], demo, -1)
        tau = self.config.threshold
        self.pool = []
        for j, c in enumerate(chosen):
            per = [0.0 if i in set(c.misaligned) else 1.0 for i in range(len(opt))] \
                if tau >= 1.0 else None
            if per is None:  # graded tasks: recompute the exact per-sample scores
                per = [sample_score(self.config.task_type, c.predictions[i], q.answer)
                       for i, q in enumerate(opt)]
            if extra:
                per += [sample_score(self.config.task_type, extra[j].predictions[i], q.answer)
                        for i, q in enumerate(demo)]
            self.pool.append(PoolPrompt(c.prompt, c.score, per))
        self.train_questions = [q.question for q in questions]

    # ------------------------------------------------------------------ predict
    def select(self, questions: Sequence[Any], use_rop: bool | None = None) -> list[int]:
        """The pool index used for each question (RoP, or the best prompt without it)."""
        if not self.fitted:
            raise ConfigError("Fermi is not fitted: call fit() or load() first")
        use_rop = (self.config.mode == "fermi") if use_rop is None else use_rop
        correctness = np.array([p.correctness for p in self.pool], dtype=float)
        if not use_rop or len(self.pool) == 1:
            return [rop.best_prompt(correctness)] * len(questions)
        if self.embedder is None:
            raise ConfigError("Retrieval-of-Prompt needs an embedder")
        qs = [_as_question(q, f"question {i}").question for i, q in enumerate(questions)]
        sim = self.embedder.similarity(qs, self.train_questions)
        return rop.select_prompts(correctness, sim, self.config.rop_neighbors)

    def predict_details(self, questions: Sequence[Any], use_rop: bool | None = None,
                        phase: str | None = None) -> list[dict[str, Any]]:
        questions = [_as_question(q, f"question {i}") for i, q in enumerate(questions)]
        picks = self.select(questions, use_rop)
        llm = self._require(self.task_llm, "task")
        items = [choice_item(self.pool[p].prompt, q) for p, q in zip(picks, questions)]
        ctx = llm.phase(phase) if phase else self._phase(llm, "predict")
        with ctx:
            results = llm.score_choices(items, method=self.config.scoring_method)
        return [{"choice": r.choice, "prompt_index": p, "logprobs": r.logprobs, "raw": r.raw}
                for r, p in zip(results, picks)]

    def predict(self, questions: Sequence[Any], use_rop: bool | None = None) -> list[int | None]:
        return [d["choice"] for d in self.predict_details(questions, use_rop)]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"format": "personalign.fermi", "version": FORMAT_VERSION,
                "config": self.config.to_dict(), "user_id": self.user_id,
                "profile": self.profile, "train_questions": list(self.train_questions),
                "pool": [p.to_dict() for p in self.pool],
                "fit": self.result.to_dict() if self.result else None}

    def save(self, path: str | Path) -> Path:
        """Write the learned pool as JSON (tmp file + rename: never half-written)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], task_llm: LLM | None = None,
                  optimizer_llm: LLM | None = None, embedder=None,
                  path: str | None = None) -> "Fermi":
        if data.get("format") != "personalign.fermi":
            raise DataError("not a personalign Fermi file", path=path, field="format")
        try:
            obj = cls(FermiConfig.from_dict(data["config"]), task_llm, optimizer_llm, embedder)
            obj.user_id = data["user_id"]
            obj.profile = data["profile"]
            obj.train_questions = list(data["train_questions"])
            obj.pool = [PoolPrompt(p["prompt"], p["train_score"], list(p["correctness"]))
                        for p in data["pool"]]
        except KeyError as e:
            raise DataError(f"missing key {e.args[0]!r}", path=path) from None
        fit = data.get("fit")
        if fit:
            obj.result = FitResult(fit["user_id"], fit["history"], fit["failures"], fit["counts"])
        return obj

    @classmethod
    def load(cls, path: str | Path, task_llm: LLM | None = None,
             optimizer_llm: LLM | None = None, embedder=None) -> "Fermi":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg}", path=str(path), line=e.lineno) from None
        return cls.from_dict(data, task_llm, optimizer_llm, embedder, path=str(path))
