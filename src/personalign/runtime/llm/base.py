"""The LLM interface: generate, score multiple-choice options, log-likelihood, with caching.

Backends implement the underscore methods on cache misses; this class owns the cache, the usage
counters (per phase) and the generic generate-and-parse scoring used where no log-probs exist.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from tqdm.auto import tqdm

from personalign.runtime import settings
from personalign.runtime.llm.cache import CallCache, cache_key
from personalign.runtime.llm.choice_parser import parse_choice
from personalign.runtime.llm.types import (
    ChoiceItem, ChoiceResult, Prompt, SamplingParams, ScoringMethod, Usage,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]

ANSWER_INSTRUCTION = "Reply with the letter of one answer choice only."


@dataclass
class Generation:
    """What a backend returns for one prompt: n texts and the tokens it spent."""

    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LLM(ABC):
    """One model behind one backend. Subclasses set ``backend`` and ``model_id``."""

    backend: str = "abstract"
    model_id: str = ""
    default_scoring: ScoringMethod = "letter"

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

    def _count(self, **kw) -> None:
        self.usage.add(phase=self._phase, **kw)

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

    def score_choices(self, items: Sequence[ChoiceItem], method: ScoringMethod | None = None,
                      *, progress: bool = False) -> list[ChoiceResult]:
        """Normalized per-option log-probs and the chosen option for every item."""
        method = method or self.default_scoring
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
        else:
            results = self._score([items[i] for i in todo], method, bar.update)
        bar.close()
        for i, res in zip(todo, results):
            out[i] = res
            self._store(keys[i], {"logprobs": res.logprobs, "choice": res.choice, "raw": res.raw})
        self._count(scored_items=len(todo))
        return out  # type: ignore[return-value]

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

    def _score(self, items: Sequence[ChoiceItem], method: ScoringMethod,
               progress: ProgressFn) -> list[ChoiceResult]:
        raise NotImplementedError(
            f"{self.backend} backend cannot score by {method!r}; use method='generate'")

    def _loglikelihood(self, requests: Sequence[tuple[str, str]],
                       progress: ProgressFn) -> list[float]:
        raise NotImplementedError(f"{self.backend} backend has no log-likelihoods")

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

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
