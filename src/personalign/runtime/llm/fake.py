"""A deterministic scripted LLM for unit tests of algorithm logic (never a default backend)."""

from __future__ import annotations

import hashlib
import math
import re
import time
from typing import Callable, Iterator, Sequence

from personalign.runtime.llm.base import LLM, Generation, ProgressFn
from personalign.runtime.llm.types import (
    ChoiceItem, ChoiceResult, Prompt, SamplingParams, ScoringMethod,
)


def _prompt_text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


class FakeLLM(LLM):
    """``responder(prompt_text, sample_index) -> text`` drives generation;
    ``chooser(item) -> option index`` drives scoring (default: a hash of the item);
    ``delay`` seconds are slept per call (a slow model for timing and kill tests)."""

    backend = "fake"

    def __init__(self, responder: Callable[[str, int], str] | None = None,
                 chooser: Callable[[ChoiceItem], int] | None = None, model_id: str = "fake",
                 cache=None, delay: float = 0.0):
        super().__init__(cache=cache)
        self.delay = delay
        self.model_id = model_id
        self.responder = responder or (lambda text, i: f"[prompt {i}]")
        self.chooser = chooser or (lambda item: int(hashlib.md5(
            (item.prefix + item.prompt).encode()).hexdigest(), 16) % len(item.options))
        self.prompts_seen: list[str] = []

    def _generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        out = []
        for p in prompts:
            text = _prompt_text(p)
            self.prompts_seen.append(text)
            time.sleep(self.delay)
            texts = [self.responder(text, i) for i in range(params.n)]
            out.append(Generation(texts, len(text) // 4, sum(len(t) // 4 for t in texts)))
        return out

    def _stream(self, prompt: Prompt, params: SamplingParams, usage: Generation
                ) -> Iterator[str]:
        """The response word by word, ``delay`` seconds spread over the words."""
        text = _prompt_text(prompt)
        self.prompts_seen.append(text)
        answer = self.responder(text, 0)
        words = re.findall(r"\s*\S+|\s+$", answer) or [answer]
        usage.prompt_tokens = len(text) // 4
        for word in words:
            time.sleep(self.delay / len(words))
            yield word
        usage.completion_tokens = len(answer) // 4  # as _generate counts

    def _score(self, items: Sequence[ChoiceItem], method: ScoringMethod,
               progress: ProgressFn) -> list[ChoiceResult]:
        out = []
        for item in items:
            time.sleep(self.delay)
            c = self.chooser(item)
            n = len(item.options)
            lp = [math.log(0.7) if i == c else math.log(0.3 / max(1, n - 1)) for i in range(n)]
            out.append(ChoiceResult(lp, c))
            self._count(calls=1)
            progress(1)
        return out

    def _loglikelihood(self, requests, progress):
        self._count(calls=len(requests))
        return [-float(len(cont)) for _, cont in requests]
