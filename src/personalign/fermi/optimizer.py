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
from personalign.fermi.config import FermiConfig
from personalign.fermi.memory import Candidate, Memory
from personalign.fermi.meta_prompt import build_continuation_prompt, build_meta_prompt
from personalign.fermi.parsing import parse_continuation, parse_prompt
from personalign.fermi.tasks import is_misaligned, sample_score
from personalign.runtime.data.opinionqa import profile_text
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.data.splits import derive_seed, optimization_split
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.llm.base import LLM
from personalign.runtime.llm.types import SamplingParams
from personalign.runtime.personalizer import Answer
from personalign.runtime.prompts import answered_block, choice_item, profile_prompt, shown
from personalign.runtime.retrieval import retrieve
from personalign.runtime.storage import atomic_write_json

log = logging.getLogger(__name__)

# Version 2 records the task model of the fit and drops the never-used rating_scale option;
# version 3 keeps the opinions that ``context_shots`` are retrieved from.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
# What can go wrong with an optimizer reply; every key is reported (zero or not).
FAILURE_KEYS = ("cut_off", "no_brackets_fallback", "unclosed_bracket", "unparseable", "empty",
                "duplicate", "too_long", "retries", "short_iterations")


EVIDENCE_HEADER = "This person's own answers to earlier questions:"


def with_evidence(prompt: str, opinions: Sequence[Opinion]) -> str:
    """The prompt followed by past opinions answered the way the person answered them."""
    if not opinions:
        return prompt
    return "\n\n".join([prompt, EVIDENCE_HEADER, *(answered_block(q) for q in opinions)])


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
    """What a fit did. ``collapsed``: no rewrite was accepted over the whole fit, so the pool
    is the initial prompt alone; ``pool_source`` says where the pool came from: "initial",
    "last_k", "last_k+best", "memory" or "memory+initial" (the initial prompt added)."""

    user_id: str
    history: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=lambda: {k: 0 for k in FAILURE_KEYS})
    counts: dict[str, int] = field(default_factory=lambda: {"optimizer_replies": 0,
                                                            "accepted": 0,
                                                            "prompts_scored": 0})
    collapsed: bool = False
    pool_source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "history": self.history,
                "failures": dict(self.failures), "counts": dict(self.counts),
                "collapsed": self.collapsed, "pool_source": self.pool_source}

    @classmethod
    def from_dict(cls, d: dict[str, Any], final_pool: str) -> "FitResult":
        # Version 1 files lack the newer keys; an empty fit is exactly a collapsed one.
        collapsed = d.get("collapsed", d["counts"]["accepted"] == 0)
        return cls(d["user_id"], d["history"], {**{k: 0 for k in FAILURE_KEYS}, **d["failures"]},
                   d["counts"], collapsed,
                   d.get("pool_source", "initial" if collapsed else final_pool))


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
        # the fit's opinions, which ``context_shots`` are retrieved from
        self.context_opinions: list[Opinion] = []
        self.result: FitResult | None = None
        self.memory: Memory | None = None
        # {"backend", "model_id"} of the task model the pool was scored with (None: unknown)
        self.fit_task_model: dict[str, str] | None = None

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
                       iteration: int, evidence: Sequence[tuple[int, ...]] | None = None
                       ) -> list[Candidate]:
        """Score every prompt on every question with the task model (one batched call).
        ``evidence``: per prompt, indices into ``questions`` shown after it (see
        :func:`with_evidence`)."""
        llm = self._require(self.task_llm, "task")
        evidence = evidence or [()] * len(prompts)
        texts = [with_evidence(p, [questions[i] for i in ev]) for p, ev in zip(prompts, evidence)]
        contexts = self.contexts(questions, leave_out_self=True)[0] \
            if self.config.context_at_fit else [""] * len(questions)
        items = [choice_item(t, q, c) for t in texts for q, c in zip(questions, contexts)]
        results = llm.score_choices(items, method=self.config.scoring_method)
        out, n = [], len(questions)
        tau = self.config.threshold
        for j, prompt in enumerate(prompts):
            preds = [results[j * n + i].choice for i in range(n)]
            scores = self.sample_scores(preds, questions)
            mis = tuple(i for i, s in enumerate(scores) if is_misaligned(s, tau))
            out.append(Candidate(prompt=prompt, score=float(np.mean(scores)) if scores else 0.0,
                                 misaligned=mis, predictions=tuple(preds),
                                 iteration=iteration, evidence=tuple(evidence[j])))
        return out

    def contexts(self, questions: Sequence[Opinion], leave_out_self: bool = False
                 ) -> tuple[list[str], list[list[int]]]:
        """Per question, the ``context_shots`` past opinions most similar to it (the most
        similar last, next to the question) as one text, and their indices into
        ``context_opinions``; empty texts when the option is off."""
        k = self.config.context_shots
        if not k or not self.context_opinions:
            return [""] * len(questions), [[] for _ in questions]
        picked = retrieve(self.context_opinions, questions, k, "embeddings", self.embedder,
                          leave_out_self=leave_out_self)
        return [shown(self.context_opinions, idx) for idx in picked], picked

    def sample_scores(self, predictions: Sequence[Any],
                      questions: Sequence[Opinion]) -> list[float]:
        """Each prediction's score against the person's answer to its question."""
        return [sample_score(self.config.task_type, pred, q.answer)
                for pred, q in zip(predictions, questions)]

    def _pick_evidence(self, reference: Candidate, n_questions: int, iteration: int,
                       index: int) -> tuple[int, ...]:
        """``evidence_per_prompt`` optimization questions for one new prompt, in a seeded
        random order: the reference entry's failure cases first (``evidence_from="failures"``),
        or any of them."""
        rng = np.random.default_rng(derive_seed(self.config.seed, self.user_id, "evidence",
                                                iteration, index))
        missed = set(reference.misaligned) if self.config.evidence_from == "failures" else set()
        order = [*rng.permutation(sorted(missed)),
                 *rng.permutation([i for i in range(n_questions) if i not in missed])]
        return tuple(int(i) for i in order[:self.config.evidence_per_prompt])

    def reply_budget(self, memory: Memory) -> int:
        """Optimizer tokens for one reply: the configured value, or the longest prompt in
        memory plus the margin (a rewrite must fit whole, or it is rejected as cut off)."""
        cfg = self.config
        if cfg.optimizer_max_tokens is not None:
            return cfg.optimizer_max_tokens
        llm = self._require(self.optimizer_llm, "optimizer")
        longest = max(llm.count_tokens(c.prompt) for c in memory.ranked())
        return longest + cfg.optimizer_token_margin

    @staticmethod
    def _cut_off(llm: LLM, reply: str, max_tokens: int) -> bool:
        """Whether a reply ran into its token budget before closing its bracket.

        Backends drop the stop string and report no finish reason, so a reply that stopped at
        "]" looks like one cut at the budget; only its length tells them apart. Re-encoding
        sampled text drifts by a few tokens (-1 to +4 in 9 SmolLM2 replies cut at 151), hence
        a slack of 10%: a complete reply that close to the budget is rejected too, never the
        reverse. (Without the stop string the "]" would show, but SmolLM2 then runs on to the
        budget: 2-2.5x the optimizer time.)"""
        if parse_prompt(reply).how == "brackets":
            return False
        return llm.count_tokens(reply) >= max_tokens - max(4, max_tokens // 10)

    def _request(self, llm: LLM, meta_prompt: str) -> tuple[Any, tuple[str, ...], bool]:
        """What the optimizer is sent, its stop strings, and whether the reply continues an
        opened "[" (then it is whole when it stops)."""
        cfg = self.config
        if cfg.optimizer_strategy == "continuation":
            return meta_prompt, ("\n",), False
        primed = cfg.prime_bracket and callable(getattr(llm, "render", None))
        messages = [{"role": "user", "content": meta_prompt}]
        if primed:
            return llm.render(messages) + "[", ("]",), True
        return messages, (), False

    def _propose(self, meta_prompt: str, iteration: int, max_tokens: int, seen: set[str],
                 result: FitResult) -> list[str]:
        """Up to ``samples_per_iteration`` new prompts: that many samples, then bounded retries
        for the ones that failed."""
        llm = self._require(self.optimizer_llm, "optimizer")
        cfg = self.config
        request, stop, primed = self._request(llm, meta_prompt)
        accepted: list[str] = []
        for attempt in range(cfg.max_retries + 1):
            need = self.config.replies_per_iteration - len(accepted)
            if need <= 0:
                break
            if attempt:
                result.failures["retries"] += 1
            params = SamplingParams(
                n=need, temperature=cfg.optimizer_temperature, max_tokens=max_tokens, stop=stop,
                seed=derive_seed(cfg.seed, self.user_id, iteration, attempt))
            replies = llm.generate([request], params)[0]
            for reply in replies:
                result.counts["optimizer_replies"] += 1
                if self._cut_off(llm, reply, max_tokens):
                    result.failures["cut_off"] += 1
                    continue
                if primed:
                    # The reply continues after "[" and ended at "]" (dropped by the backend)
                    # or at the end of the turn: either way the text is whole.
                    reply = "[" + reply + "]"
                if cfg.optimizer_strategy == "continuation":
                    parsed = parse_continuation(reply)
                else:
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
        if len(accepted) < self.config.replies_per_iteration:
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
        self.context_opinions = list(opinions) if cfg.context_shots else []
        opt, demo = optimization_split(opinions, cfg.optimization_fraction)
        result = FitResult(self.user_id)
        memory = Memory(cfg.memory_size)
        first = profile_prompt(self.profile)
        seen = {_normalize(first)}
        with self._phase(self.task_llm, "score"):
            initial = self._score_prompts([first], opt, 0)
        self.fit_task_model = {"backend": self.task_llm.backend,
                               "model_id": self.task_llm.model_id}
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
            if cfg.optimizer_strategy == "continuation":
                meta = build_continuation_prompt(
                    profile=self.profile, questions=opt, entries=entries, reference=reference,
                    mode=cfg.mode, failure_case_cap=cfg.failure_case_cap)
            else:
                meta = build_meta_prompt(
                    profile=self.profile, questions=opt, demonstrations=demo, entries=entries,
                    reference=reference, mode=cfg.mode, failure_case_cap=cfg.failure_case_cap)
            max_tokens = self.reply_budget(memory)
            with self._phase(self.optimizer_llm, "optimize"):
                prompts = self._propose(meta, t, max_tokens, seen, result)
            evidence = [self._pick_evidence(reference, len(opt), t, j)
                        for j in range(len(prompts))] \
                if cfg.evidence_per_prompt and reference is not None else None
            with self._phase(self.task_llm, "score"):
                cands = self._score_prompts(prompts, opt, t, evidence) if prompts else []
            result.counts["prompts_scored"] += len(cands)
            if len(cands) > cfg.num_candidates:
                # More samples than K: the best K go on (ties: sampled first).
                cands = sorted(cands, key=lambda c: -c.score)[:cfg.num_candidates]
            memory.extend(cands)
            generated.extend(cands)
            result.history.append({"iteration": t, "best_score": memory.best_score,
                                   "scores": [c.score for c in cands], "accepted": len(cands),
                                   "max_tokens": max_tokens})
            bar.set_postfix(best=f"{memory.best_score:.2f}")
        bar.close()
        result.collapsed = not generated
        if result.collapsed:
            log.warning("%s %s: no rewrite accepted in %d iterations (failures: %s); the pool "
                        "is the initial prompt alone", cfg.mode, self.user_id, cfg.iterations,
                        {k: v for k, v in result.failures.items() if v})
            chosen, result.pool_source = initial, "initial"
        elif cfg.final_pool in ("memory", "memory+initial"):
            chosen, result.pool_source = memory.ranked(), "memory"
            # Rewrites that beat the profile prompt by chance on a few questions can push it
            # out; kept, Retrieval-of-Prompt can still pick it where its neighbours favour it.
            if cfg.final_pool == "memory+initial" and initial[0] not in chosen:
                chosen, result.pool_source = chosen + initial, "memory+initial"
        else:
            chosen, result.pool_source = generated[-cfg.num_candidates:], "last_k"
            best = memory.ranked()[0]
            if cfg.include_best and best not in chosen:
                chosen, result.pool_source = chosen + [best], "last_k+best"
        self.memory = memory
        self.result = result
        self._cache_pool(chosen, opt, demo)
        return self

    def _cache_pool(self, chosen: Sequence[Candidate], opt: Sequence[Opinion],
                    demo: Sequence[Opinion]) -> None:
        """Per-sample scores of each pool prompt on U_opi (opt part reused, demo scored).
        A pool of one prompt has nothing to choose between: the demo part is not scored."""
        score_demo = self.config.rop_include_demo and bool(demo) and len(chosen) > 1
        questions = list(opt) + (list(demo) if score_demo else [])
        texts = [with_evidence(c.prompt, [opt[i] for i in c.evidence]) for c in chosen]
        extra: list[Candidate] = []
        if score_demo:
            with self._phase(self.task_llm, "pool"):
                extra = self._score_prompts(texts, demo, -1)
        tau = self.config.threshold
        self.pool = []
        for j, c in enumerate(chosen):
            if tau >= 1.0:
                missed = set(c.misaligned)
                per = [0.0 if i in missed else 1.0 for i in range(len(opt))]
            else:  # graded tasks: the exact per-sample scores
                per = self.sample_scores(c.predictions, opt)
            if extra:
                per += self.sample_scores(extra[j].predictions, demo)
            self.pool.append(PoolPrompt(texts[j], c.score, per))
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

    def answers(self, questions: Sequence[Any], use_rop: bool | None = None,
                phase: str | None = None) -> list[Answer]:
        """Each question answered with its pool prompt (RoP's pick, or the best), with the
        past opinions shown after it (``context_shots``)."""
        questions = [_as_question(q, f"question {i}") for i, q in enumerate(questions)]
        picks = self.select(questions, use_rop)
        llm = self._require(self.task_llm, "task")
        contexts, picked = self.contexts(questions)
        items = [choice_item(self.pool[p].prompt, q, c)
                 for p, q, c in zip(picks, questions, contexts)]
        ctx = llm.phase(phase) if phase else self._phase(llm, "predict")
        with ctx:
            results = llm.score_choices(items, method=self.config.scoring_method)
        return [Answer(r.choice, r.logprobs, prompt=self.pool[p].prompt, prompt_index=p,
                       shots=[self.context_opinions[i].qid or self.context_opinions[i].question
                              for i in idx])
                for r, p, idx in zip(results, picks, picked)]

    def predict(self, questions: Sequence[Any], use_rop: bool | None = None) -> list[int | None]:
        return [a.choice for a in self.answers(questions, use_rop)]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"format": "personalign.fermi", "version": FORMAT_VERSION,
                "task_model": self.fit_task_model,
                "config": self.config.to_dict(), "user_id": self.user_id,
                "profile": self.profile, "train_questions": list(self.train_questions),
                "pool": [p.to_dict() for p in self.pool],
                "context_opinions": [o.to_dict() for o in self.context_opinions],
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
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise DataError(f"unsupported version {version!r}; this personalign reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))}", path=path,
                            field="version")
        try:
            config = dict(data["config"])
            if version == 1:
                config.pop("rating_scale", None)  # dropped in version 2: nothing read it
            obj = cls(FermiConfig.from_dict(config), task_llm, optimizer_llm, embedder)
            obj.fit_task_model = data.get("task_model")  # version 1: unknown
            obj.user_id = data["user_id"]
            obj.profile = data["profile"]
            obj.train_questions = list(data["train_questions"])
            obj.pool = [PoolPrompt(p["prompt"], p["train_score"], list(p["correctness"]))
                        for p in data["pool"]]
            obj.context_opinions = [Opinion.from_dict(o)
                                    for o in data.get("context_opinions", [])]
            fit = data.get("fit")
            obj.result = FitResult.from_dict(fit, obj.config.final_pool) if fit else None
        except KeyError as e:
            raise DataError(f"missing key {e.args[0]!r}", path=path) from None
        if task_llm is not None and obj.fit_task_model and obj.fit_task_model != {
                "backend": task_llm.backend, "model_id": task_llm.model_id}:
            log.warning("%s: the pool was fit with task model %s, now used with %s:%s",
                        path or "Fermi pool", obj.fit_task_model, task_llm.backend,
                        task_llm.model_id)
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
