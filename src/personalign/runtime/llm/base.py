"""The LLM interface: generate, score multiple-choice options, log-likelihood, with caching.

Backends implement the underscore methods on cache misses; this class owns the cache, the usage
counters (per phase), the observers of its calls and the generic generate-and-parse scoring used
where no log-probs exist.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Literal, Sequence

from tqdm.auto import tqdm

from personalign.runtime import settings
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm import debias
from personalign.runtime.llm.cache import CallCache, cache_key
from personalign.runtime.llm.choice_parser import parse_choice
from personalign.runtime.llm.types import (
    ChoiceItem, ChoiceResult, Prompt, SamplingParams, ScoringMethod, Usage,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]
CallKind = Literal["generate", "score", "loglikelihood", "stream"]

ANSWER_INSTRUCTION = "Reply with the letter of one answer choice only."


def transcript(messages: Sequence[dict]) -> str:
    """Chat messages for a model without a chat template: a plain transcript it continues."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


@dataclass
class Generation:
    """What a backend returns for one prompt: n texts and the tokens it spent."""

    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CallObserver:
    """Sees the calls of the LLMs it is attached to (:meth:`LLM.observe`), from whichever
    thread makes them. ``before_call`` runs as a public operation starts (one answered from
    the cache included); ``after_call`` each time the operation's work is counted, with what
    that spent (calls, cache hits, tokens): per backend call or batch, so a hook that raises
    (a budget, a cancellation) ends the operation there."""

    def before_call(self, llm: "LLM", kind: CallKind) -> None:
        pass

    def after_call(self, llm: "LLM", kind: CallKind, spent: Usage) -> None:
        pass


_attaching = threading.Lock()  # observers are attached and detached from any thread
_calling = threading.local()   # the operation a thread is in: the kind of what it counts


def _operation(kind: CallKind):
    """A public operation: its observers hear of it first, and its counts are of ``kind``."""
    def wrap(method):
        @functools.wraps(method)
        def run(self: "LLM", *args, **kwargs):
            for observer in self.observers:
                observer.before_call(self, kind)
            outer, _calling.kind = getattr(_calling, "kind", None), kind
            try:
                return method(self, *args, **kwargs)
            finally:
                _calling.kind = outer
        return run
    return wrap


class LLM(ABC):
    """One model behind one backend. Subclasses set ``backend`` and ``model_id``."""

    backend: str = "abstract"
    model_id: str = ""
    default_scoring: ScoringMethod = "letter"
    # Instruct models are asked through their chat template: an item is the user's turn and
    # its choice is read from the assistant turn's first token (the bare letter). Base models
    # continue the raw text and the letter follows "Answer:" with a space.
    chat_scoring: bool = False
    observers: tuple[CallObserver, ...] = ()

    def __init__(self, cache: CallCache | bool | None = True):
        if cache is True:
            cache = CallCache() if settings.cache_enabled() else None
        # Not `cache or None`: an empty CallCache has len 0 and would read as false.
        self.cache: CallCache | None = None if cache in (None, False) else cache
        self.usage = Usage()
        self._phase: str | None = None

    # ------------------------------------------------------------------ bookkeeping
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute calls, tokens and wall time inside the block to ``name`` in
        ``usage.by_phase`` (nested blocks count their time to the inner phase only)."""
        previous, self._phase = self._phase, name
        start = time.perf_counter()
        try:
            yield
        finally:
            self._phase = previous
            elapsed = time.perf_counter() - start
            self.usage.add(phase=name, seconds=elapsed)
            if previous is not None:  # the outer phase's time excludes this block
                self.usage.add(phase=previous, seconds=-elapsed)

    def observe(self, *observers: CallObserver) -> None:
        """Report this model's calls to ``observers`` as well (each once)."""
        with _attaching:
            for observer in observers:
                if all(o is not observer for o in self.observers):
                    self.observers = (*self.observers, observer)

    def unobserve(self, observer: CallObserver) -> None:
        with _attaching:
            self.observers = tuple(o for o in self.observers if o is not observer)

    def view(self) -> "LLM":
        """This model (backend, weights, cache, usage counters) as another object with its own
        observers and phase: observers attached to it see only the calls made through it,
        while others use the model beside it."""
        view = copy.copy(self)
        view.observers, view._phase = (), None
        return view

    def _count(self, kind: CallKind | None = None, **kw) -> None:
        self.usage.add(phase=self._phase, **kw)
        if self.observers:
            spent = Usage(**kw)
            # outside any operation (a caller counting its own request): a generation
            kind = kind or getattr(_calling, "kind", None) or "generate"
            for observer in self.observers:
                observer.after_call(self, kind, spent)

    def _identity(self) -> tuple[str, str]:
        return (self.backend, self.model_id)

    def _cached(self, keys: list[str]) -> list:
        if self.cache is None:
            return [None] * len(keys)
        return [self.cache.get(k) for k in keys]

    def _store(self, key: str, value) -> None:
        if self.cache is not None:
            self.cache.set(key, value)

    # ------------------------------------------------------------------ public operations
    @_operation("generate")
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams = SamplingParams(),
                 *, progress: bool = False) -> list[list[str]]:
        """``params.n`` texts for each prompt (chat messages or raw text)."""
        keys = [cache_key(self._identity(), "generate", p, params) for p in prompts]
        out = self._cached(keys)
        self._count(cache_hits=sum(o is not None for o in out))
        todo = [i for i, o in enumerate(out) if o is None]
        bar = tqdm(total=len(todo), desc=f"generate {self.model_id}", disable=not progress,
                   leave=False)
        for i in todo:
            gen = self._generate([prompts[i]], params)[0]
            self._count(calls=1, prompt_tokens=gen.prompt_tokens,
                        completion_tokens=gen.completion_tokens)
            out[i] = gen.texts
            self._store(keys[i], gen.texts)
            bar.update(1)
        bar.close()
        return out

    @_operation("generate")
    def generate_one(self, prompt: Prompt, params: SamplingParams = SamplingParams()
                     ) -> tuple[list[str], int, int]:
        """``generate`` for one prompt, with the tokens this request took: (texts,
        prompt_tokens, completion_tokens). A cache hit reports the tokens of the call that
        filled the cache (kept next to its texts), so the same request reports the same
        usage whether it was computed or cached (servers report per-request usage)."""
        key = cache_key(self._identity(), "generate", prompt, params)
        usage_key = cache_key(self._identity(), "generate-usage", prompt, params)
        texts, used = self._cached([key, usage_key])
        if texts is not None and used is not None:
            self._count(cache_hits=1)
            return texts, int(used[0]), int(used[1])
        gen = self._generate([prompt], params)[0]
        self._count(calls=1, prompt_tokens=gen.prompt_tokens,
                    completion_tokens=gen.completion_tokens)
        self._store(key, gen.texts)
        self._store(usage_key, [gen.prompt_tokens, gen.completion_tokens])
        return gen.texts, gen.prompt_tokens, gen.completion_tokens

    @_operation("stream")
    def stream(self, prompt: Prompt, params: SamplingParams = SamplingParams(),
               usage: Generation | None = None) -> Iterator[str]:
        """One text for ``prompt`` (``params.n`` is taken as 1) in pieces, each given as soon
        as the backend has written it; the pieces join to the text ``generate_one`` gives.
        ``usage``, if given, receives the text and its token counts when the pieces run out.
        A cached text comes as one piece, as does the text of a backend without ``_stream``."""
        params = replace(params, n=1)
        usage = usage if usage is not None else Generation([])
        key = cache_key(self._identity(), "generate", prompt, params)
        usage_key = cache_key(self._identity(), "generate-usage", prompt, params)
        texts, used = self._cached([key, usage_key])
        # a generator runs after the decorator has returned: its counts name their kind
        if texts is not None and used is not None:
            self._count("stream", cache_hits=1)
            usage.texts, usage.prompt_tokens, usage.completion_tokens = texts, *map(int, used)
            yield texts[0]
            return
        written = []
        for piece in self._stream(prompt, params, usage):
            if piece:
                written.append(piece)
                yield piece
        usage.texts = ["".join(written)]
        self._count("stream", calls=1, prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens)
        self._store(key, usage.texts)
        self._store(usage_key, [usage.prompt_tokens, usage.completion_tokens])

    @_operation("score")
    def score_choices(self, items: Sequence[ChoiceItem], method: ScoringMethod | None = None,
                      *, progress: bool = False) -> list[ChoiceResult]:
        """Normalized per-option log-probs and the chosen option for every item."""
        method = method or self.default_scoring
        estimation = None
        if method in ("letter-pride", "letter-pride-prefix"):
            # A PriDe result depends on the items its prior came from: they join the key.
            per_prefix = method == "letter-pride-prefix"
            estimation = debias.estimation_items(items, per_prefix)
            keys = [cache_key(self._identity(), "score", method, it,
                              estimation[debias.pride_group(it, per_prefix)]) for it in items]
        else:
            keys = [cache_key(self._identity(), "score", method, it) for it in items]
        cached = self._cached(keys)
        out: list[ChoiceResult | None] = [None if c is None else ChoiceResult(**c)
                                          for c in cached]
        self._count(cache_hits=sum(o is not None for o in out))
        todo = [i for i, o in enumerate(out) if o is None]
        if not todo:
            return out  # type: ignore[return-value]
        # Items sharing a prefix go together so fast backends encode the prefix once.
        todo.sort(key=lambda i: items[i].prefix)
        bar = tqdm(total=len(todo), desc=f"score {self.model_id}", disable=not progress,
                   leave=False)
        if method == "generate":
            results = self._score_by_generation([items[i] for i in todo], bar.update)
        elif method in debias.LETTER_CORRECTIONS:
            results = self._score_letter_corrected([items[i] for i in todo], method,
                                                   estimation)
            bar.update(len(todo))
        else:
            results = self._score([items[i] for i in todo], method, bar.update)
        bar.close()
        for i, res in zip(todo, results):
            out[i] = res
            self._store(keys[i], {"logprobs": res.logprobs, "choice": res.choice, "raw": res.raw})
        self._count(scored_items=len(todo))
        return out  # type: ignore[return-value]

    @_operation("loglikelihood")
    def loglikelihood(self, requests: Sequence[tuple[str, str]],
                      *, progress: bool = False) -> list[float]:
        """Summed log p(continuation | context) for each (context, continuation) pair."""
        keys = [cache_key(self._identity(), "loglik", r) for r in requests]
        out = self._cached(keys)
        self._count(cache_hits=sum(o is not None for o in out))
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            bar = tqdm(total=len(todo), desc=f"loglik {self.model_id}", disable=not progress,
                       leave=False)
            values = self._loglikelihood([requests[i] for i in todo], bar.update)
            bar.close()
            for i, v in zip(todo, values):
                out[i] = v
                self._store(keys[i], v)
        return out

    def count_tokens(self, text: str) -> int:
        """Token count of ``text``; backends with a tokenizer override the estimate."""
        return max(1, len(text) // 4)

    # ------------------------------------------------------------------ backend hooks
    @abstractmethod
    def _generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        ...

    def _stream(self, prompt: Prompt, params: SamplingParams, usage: Generation
                ) -> Iterator[str]:
        """Backend hook: the pieces of one text as they are written, with ``usage``'s token
        counts set by the end. By default the whole text, once generated."""
        gen = self._generate([prompt], params)[0]
        usage.prompt_tokens, usage.completion_tokens = gen.prompt_tokens, gen.completion_tokens
        yield gen.texts[0]

    def _score(self, items: Sequence[ChoiceItem], method: ScoringMethod,
               progress: ProgressFn) -> list[ChoiceResult]:
        raise NotImplementedError(
            f"{self.backend} backend cannot score by {method!r}; use method='generate'")

    def _loglikelihood(self, requests: Sequence[tuple[str, str]],
                       progress: ProgressFn) -> list[float]:
        raise NotImplementedError(f"{self.backend} backend has no log-likelihoods")

    # ------------------------------------------------------------------ scored text
    def scored_text(self, item: ChoiceItem) -> tuple[str, str]:
        """The text scored for ``item``, split where its shared head ends: (head, rest). The
        head depends on ``item.prefix`` only, so items that share a prefix share its KV cache.
        With ``chat_scoring`` (backends that set it have ``render``, the chat template) the item
        is the user's turn and the rest ends at the assistant turn's start."""
        if not self.chat_scoring:
            return item.prefix, item.prompt
        marker = "\x00"  # one render, split where the prefix ends inside the user's turn
        whole = self.render([{"role": "user", "content": item.prefix + marker + item.prompt}])
        head, _, rest = whole.partition(marker)
        return head, rest

    def answer_start(self, answer: str) -> str:
        """An answer (a choice letter or an option's text) as the model writes it: bare at the
        start of the assistant's turn, after a space when it continues "Answer:"."""
        return answer if self.chat_scoring else " " + answer

    # ------------------------------------------------------------------ generic scoring
    def choice_prompt(self, item: ChoiceItem) -> Prompt:
        """How an item is asked when the answer is generated: chat for chat models."""
        return [{"role": "user",
                 "content": f"{item.prefix}{item.prompt}\n{ANSWER_INSTRUCTION}".strip()}]

    def _score_by_generation(self, items: Sequence[ChoiceItem],
                             progress: ProgressFn) -> list[ChoiceResult]:
        params = SamplingParams(n=1, temperature=0.0, max_tokens=24)
        results = []
        for item in items:
            gen = self._generate([self.choice_prompt(item)], params)[0]
            self._count(calls=1, prompt_tokens=gen.prompt_tokens,
                        completion_tokens=gen.completion_tokens)
            text = gen.texts[0]
            choice = parse_choice(text, item.options)
            logprobs = [0.0 if i == choice else -math.inf for i in range(len(item.options))]
            results.append(ChoiceResult(logprobs=logprobs, choice=choice, raw=text))
            progress(1)
        return results

    # ------------------------------------------------------------------ corrected letters
    def _letter_passes(self, items: Sequence[ChoiceItem]) -> list[list[float]]:
        """Normalized letter log-probs of ``items`` (an item's own pass and the extra passes
        a correction adds), cached as plain letter scoring and run in one backend call, so
        passes that share a prefix share its KV cache."""
        unique = list(dict.fromkeys(items))
        keys = {it: cache_key(self._identity(), "score", "letter", it) for it in unique}
        found = dict(zip(unique, self._cached([keys[it] for it in unique])))
        self._count(cache_hits=sum(v is not None for v in found.values()))
        todo = sorted((it for it in unique if found[it] is None), key=lambda it: it.prefix)
        for it, res in zip(todo, self._score(todo, "letter", lambda k: None) if todo else []):
            found[it] = {"logprobs": res.logprobs, "choice": res.choice, "raw": res.raw}
            self._store(keys[it], found[it])
        if not all(math.isfinite(x) for v in found.values() for x in v["logprobs"]):
            # A backend without log-probs answered by generate-and-parse (one-hot).
            raise ConfigError(f"{self.backend} backend gave no letter log-probs for "
                              f"{self.model_id}; letter debiasing needs them")
        return [found[it]["logprobs"] for it in items]

    def _score_letter_corrected(self, items: Sequence[ChoiceItem], method: ScoringMethod,
                                estimation: dict | None) -> list[ChoiceResult]:
        """PriDe (prior from cyclic permutations of the estimation items of each item's
        group) or contextual calibration (content-free inputs in place of each question)."""
        if method == "letter-calibrated":
            free = [debias.content_free(it, f) for it in items for f in debias.CONTENT_FREE]
            passes = self._letter_passes(list(items) + free)
            k, free_passes = len(debias.CONTENT_FREE), passes[len(items):]
            corrected = [debias.calibrate(passes[i], free_passes[k * i: k * (i + 1)])
                         for i in range(len(items))]
        else:
            per_prefix = method == "letter-pride-prefix"
            groups = list(dict.fromkeys(debias.pride_group(it, per_prefix) for it in items))
            estimators = list(dict.fromkeys(e for g in groups for e in estimation[g]))
            permuted = [debias.cyclic_permutation(e, k) for e in estimators
                        for k in range(len(e.options))]
            passes = self._letter_passes(permuted + list(items))
            by_estimator, start = {}, 0
            for e in estimators:
                by_estimator[e] = passes[start: start + len(e.options)]
                start += len(e.options)
            prior = {g: debias.pooled_prior([debias.item_prior(by_estimator[e])
                                             for e in estimation[g]]) for g in groups}
            corrected = [
                debias.permutation_content(by_estimator[it]) if it in by_estimator
                else debias.remove_prior(lp, prior[debias.pride_group(it, per_prefix)])
                for it, lp in zip(items, passes[start:])]
        return [ChoiceResult(logprobs=lp.tolist(), choice=int(lp.argmax())) for lp in corrected]

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
