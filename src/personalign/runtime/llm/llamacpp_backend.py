"""llama.cpp backend (optional extra ``personalign[llamacpp]``): runs a GGUF file directly,
e.g. the embedded models' own GGUFs, without converting them to a transformers folder.

Letter scoring reads the next-token logits after the prompt; "text" scoring and
log-likelihoods feed the continuation one token at a time (short options, so few evals).
Every evaluation keeps the KV cache of the tokens it shares with the previous one, so a
user's questions behind the same prompt or shots encode that prefix once. Instruct models are
prompted through the chat template stored in their GGUF.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from personalign.runtime import models
from personalign.runtime.errors import ModelError
from personalign.runtime.llm.base import LLM, Generation, ProgressFn, transcript
from personalign.runtime.llm.types import (
    ChoiceItem, ChoiceResult, Prompt, SamplingParams, ScoringMethod,
)

log = logging.getLogger(__name__)

INSTALL_HINT = ("the llama.cpp backend needs the optional extra: "
                "pip install 'personalign[llamacpp]' (builds llama-cpp-python, ~8 minutes)")


def _llama_class():
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ModelError(INSTALL_HINT) from None
    return Llama


def resolve_gguf(model: str) -> Path:
    """A ``.gguf`` path as given, or the GGUF an embedded causal LM is prepared from."""
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelError(f"GGUF file not found: {path}")
        return path
    embedded = models.EMBEDDED.get(model)
    if embedded is None or embedded.kind == "embedding":
        names = [n for n, m in models.EMBEDDED.items() if m.kind != "embedding"]
        raise ModelError(f"llamacpp: expected a .gguf path or one of {', '.join(names)}; "
                         f"got {model!r}")
    return embedded.source()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    top = x.max()
    return x - top - np.log(np.exp(x - top).sum())


class LlamaCppLLM(LLM):
    backend = "llamacpp"

    def __init__(self, model: str = models.FAST_GENERATOR, *, n_ctx: int = 4096,
                 threads: int | None = None, scoring: ScoringMethod = "letter", cache=True,
                 chat_scoring: bool | None = None, **llama_kwargs):
        """``chat_scoring``: score choices through the chat template (None: for the embedded
        instruct models, and for a GGUF whose ``general.name`` says Instruct or Chat)."""
        Llama = _llama_class()  # fail early with the install hint, before any other work
        super().__init__(cache=cache)
        self.path = resolve_gguf(model)
        self.model_id = model
        self.default_scoring = scoring
        threads = threads or int(os.environ.get("PERSONALIGN_THREADS", "0") or 0) or None
        self.llama = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads,
                           n_threads_batch=threads, verbose=False, **llama_kwargs)
        self._formatter = self._chat_formatter()
        if chat_scoring is None:
            chat_scoring = models.is_instruct(model, self.llama.metadata.get("general.name", ""))
        self.chat_scoring = bool(chat_scoring and self._formatter is not None)

    def _chat_formatter(self):
        """The GGUF's own chat template, rendered as llama-cpp-python renders it for chat."""
        template = self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(token: int) -> str:
            return self.llama._model.token_get_text(token) if token != -1 else ""

        return Jinja2ChatFormatter(template=template, eos_token=text(self.llama.token_eos()),
                                   bos_token=text(self.llama.token_bos()))

    def _identity(self) -> tuple[str, str]:
        return (self.backend, f"{self.model_id}|{self.path.name}"
                + ("|chat" if self.chat_scoring else ""))

    def render(self, prompt: Prompt) -> str:
        """Chat messages through the GGUF's chat template (up to the assistant's turn); raw
        text as is. A model without a template gets a plain transcript."""
        if isinstance(prompt, str):
            return prompt
        if self._formatter is None:
            return transcript(prompt)
        return self._formatter(messages=list(prompt)).prompt

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        # special: a rendered chat template's markers are single tokens
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=bos, special=True))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def _last_logits(self) -> np.ndarray:
        """Logits after the last evaluated token."""
        llama = self.llama
        if getattr(llama, "_logits_all", False):
            return np.asarray(llama.scores[llama.n_tokens - 1])
        # Without logits_all, llama-cpp-python (>=0.3) no longer copies logits into
        # ``scores``; the context's output buffer holds the last token's row only.
        import ctypes

        ptr = llama._ctx.get_logits()
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                     shape=(llama.n_vocab(),)).copy()

    def _next_logprobs(self, tokens: list[int]) -> np.ndarray:
        """Log-softmax of the next token after ``tokens``. Only the tokens after what they
        share with the last evaluation run: llama.cpp keeps that part of the KV cache (eval
        drops the cache past ``n_tokens``); at least one token runs, for its logits."""
        llama = self.llama
        shared = 0
        limit = min(llama.n_tokens, len(tokens) - 1)
        cached = llama.input_ids
        while shared < limit and cached[shared] == tokens[shared]:
            shared += 1
        llama.n_tokens = shared
        llama.eval(tokens[shared:])
        return _log_softmax(self._last_logits())

    def _continuation(self, context: list[int], continuation: list[int]) -> float:
        logprobs = self._next_logprobs(context)
        total = 0.0
        for i, tok in enumerate(continuation):
            total += float(logprobs[tok])
            if i + 1 < len(continuation):
                self.llama.eval([tok])
                logprobs = _log_softmax(self._last_logits())
        return total

    # ------------------------------------------------------------------ LLM hooks
    def _generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        out = []
        for prompt in prompts:
            gen = Generation([])
            n = params.n if params.temperature > 0 else 1
            for k in range(n):
                # Chat goes through render too: one template, the one scoring uses.
                response = self.llama.create_completion(prompt=self.render(prompt),
                                                        **self._sampling(params, k))
                text = response["choices"][0]["text"]
                usage = response.get("usage") or {}
                gen.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                gen.completion_tokens += int(usage.get("completion_tokens") or 0)
                gen.texts.append(text)
            gen.texts += [gen.texts[0]] * (params.n - len(gen.texts))  # greedy: identical
            out.append(gen)
        return out

    def _sampling(self, params: SamplingParams, k: int = 0) -> dict:
        """create_completion's arguments for sample ``k``: plain temperature and nucleus
        sampling, as the other backends sample (llama.cpp's defaults add top-k 40, min-p 0.05
        and a repeat penalty)."""
        kwargs = dict(temperature=params.temperature, top_p=params.top_p, top_k=0, min_p=0.0,
                      repeat_penalty=1.0, max_tokens=params.max_tokens,
                      stop=list(params.stop) or None, seed=(params.seed + k) % 2 ** 31)
        if params.ignore_eos:
            kwargs["logit_bias"] = {self.llama.token_eos(): -1e9}  # EOS never wins
        return kwargs

    def _stream(self, prompt: Prompt, params: SamplingParams, usage: Generation
                ) -> Iterator[str]:
        text = self.render(prompt)
        usage.prompt_tokens = len(self.tokenize(text))
        written = []
        for chunk in self.llama.create_completion(prompt=text, stream=True,
                                                  **self._sampling(params)):
            written.append(chunk["choices"][0]["text"])
            yield written[-1]
        usage.completion_tokens = self.count_tokens("".join(written))

    def _score(self, items: Sequence[ChoiceItem], method: ScoringMethod,
               progress: ProgressFn) -> list[ChoiceResult]:
        results = []
        bos = not self.chat_scoring  # a rendered template writes its own specials
        for item in items:
            context = self.tokenize("".join(self.scored_text(item)), bos=bos)
            if method == "letter":
                lp = self._next_logprobs(context)
                raw = np.array([lp[self.tokenize(self.answer_start(x))[0]]
                                for x in item.letters])
            elif method == "text":
                raw = np.array([self._continuation(context, self.tokenize(self.answer_start(o)))
                                for o in item.options])
            else:
                raise ValueError(f"unknown scoring method {method!r}")
            norm = _log_softmax(raw).tolist()
            results.append(ChoiceResult(norm, int(np.argmax(norm))))
            self._count(calls=1, prompt_tokens=len(context))
            progress(1)
        return results

    def _loglikelihood(self, requests: Sequence[tuple[str, str]],
                       progress: ProgressFn) -> list[float]:
        out = []
        for context, continuation in requests:
            ctx = self.tokenize(context, bos=True)
            out.append(self._continuation(ctx, self.tokenize(continuation)))
            self._count(calls=1, prompt_tokens=len(ctx))
            progress(1)
        return out
