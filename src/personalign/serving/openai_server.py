"""A small OpenAI-compatible server of the project's own: serves any :class:`LLM` (the embedded
models through the transformers backend) at ``/v1/models``, ``/v1/chat/completions`` and
``/v1/completions``, so every OpenAI client (and :class:`OpenAILLM`) can use them.

Streams (``stream: true``, one choice) send each piece as the model writes it.
Log-probs (``logprobs``/``top_logprobs``) are reported for the first generated token only,
through the optional backend hook ``next_token_logprobs(prompt, top_k)`` (TransformersLLM has
it); for a backend without it the ``logprobs`` field is null, which clients read as "no
log-probs here".
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, Protocol, Sequence, runtime_checkable

from fastapi import Request

from personalign.runtime.errors import NotFoundError
from personalign.runtime.llm.base import LLM
from personalign.runtime.llm.cache import cache_key
from personalign.runtime.llm.types import Prompt, SamplingParams
from personalign.serving import openai_format as fmt
from personalign.serving.http import install_errors
from personalign.serving.openai_routes import PATHS, openai_router

log = logging.getLogger(__name__)


@runtime_checkable
class NextTokenLogprobs(Protocol):
    """Optional backend hook: the ``top_k`` most likely next tokens after ``prompt`` (chat
    messages rendered with the model's template, generation prompt added) as (text, log-prob),
    most likely first."""

    def next_token_logprobs(self, prompt: Prompt, top_k: int = 20) -> list[tuple[str, float]]:
        ...


class _Served:
    """One model behind the server; one request at a time (usage counters are per model)."""

    def __init__(self, llm: LLM):
        self.llm = llm
        self.lock = threading.Lock()

    def generate(self, prompt: Prompt, params: SamplingParams) -> tuple[list[str], int, int]:
        # The tokens a request spent are cached next to its texts, so a cache hit reports the
        # same usage as the miss that filled it (not an estimate without the chat template).
        key = cache_key(self.llm._identity(), "usage", prompt, params)
        cache = self.llm.cache
        with self.lock:
            before = (self.llm.usage.prompt_tokens, self.llm.usage.completion_tokens)
            texts = self.llm.generate([prompt], params)[0]
            used_in = self.llm.usage.prompt_tokens - before[0]
            used_out = self.llm.usage.completion_tokens - before[1]
            if cache is not None:
                if used_in:
                    cache.set(key, [used_in, used_out])
                else:
                    known = cache.get(key)
                    if known is not None:
                        used_in, used_out = known
        if not used_in:  # a hit cached before usage was: report what the request amounts to
            used_in = self.llm.count_tokens(_prompt_text(prompt))
            used_out = sum(self.llm.count_tokens(t) for t in texts if t)
        return texts, used_in, used_out

    def top_logprobs(self, prompt: Prompt, k: int) -> list[tuple[str, float]] | None:
        if not isinstance(self.llm, NextTokenLogprobs):
            return None
        key = cache_key(self.llm._identity(), "next_token_logprobs", prompt, k)
        cache = self.llm.cache
        with self.lock:
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                self.llm._count(cache_hits=1)
                return [(t, v) for t, v in hit]
            top = self.llm.next_token_logprobs(prompt, k)
            self.llm._count(calls=1)
            if cache is not None:
                cache.set(key, [[t, v] for t, v in top])
        return top


def _prompt_text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


class _Bare:
    """The responder of one served model: no users, nothing applied; a completion prompt is
    raw text."""

    def __init__(self, model: _Served):
        self.model = model

    def check(self, texts: list[str]) -> None:
        pass

    def chat(self, messages, params: SamplingParams, top_logprobs: int | None,
             stream: bool) -> fmt.Chat:
        return self._answer(messages, params, top_logprobs, stream)

    def complete(self, prompt: str, params: SamplingParams, top_logprobs: int | None,
                 stream: bool) -> fmt.Chat:
        return self._answer(prompt, params, top_logprobs, stream)

    def _answer(self, prompt: Prompt, params: SamplingParams, k: int | None,
                stream: bool) -> fmt.Chat:
        model, llm = self.model, self.model.llm
        top = model.top_logprobs(prompt, max(1, k)) if k is not None else None
        if stream and params.n == 1:
            return fmt.streamed(llm, prompt, params, fmt.Chat([], 0, 0, None, top))
        if top and params.max_tokens == 1 and params.temperature == 0:
            # a greedy one-token answer is the most likely next token, which the log-prob
            # pass already computed (letter scoring asks exactly this): no generation
            texts, used_in, used_out = [top[0][0]] * params.n, \
                llm.count_tokens(_prompt_text(prompt)), 1
        else:
            texts, used_in, used_out = model.generate(prompt, params)
        return fmt.Chat(texts, used_in, used_out, None, top,
                        [fmt.finish_reason(llm, t, params) for t in texts])


def create_openai_app(llms: dict[str, LLM], *, default_max_tokens: int = 256):
    """FastAPI app serving ``llms`` (name -> LLM) under the OpenAI API shape."""
    from fastapi import FastAPI

    served = {name: _Served(llm) for name, llm in llms.items()}
    created = int(time.time())
    app = FastAPI(title="personalign OpenAI-compatible server")
    install_errors(app, lambda request: request.url.path in PATHS)

    def resolve(request: Request, caller: None, name: str) -> _Bare:
        if name not in served:
            raise NotFoundError(f"model {name!r} is not served here "
                                f"(served: {', '.join(served)})")
        return _Bare(served[name])

    def models(request: Request, caller: None) -> list[dict]:
        return [{"id": name, "object": "model", "created": created,
                 "owned_by": f"personalign:{s.llm.backend}"} for name, s in served.items()]

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "models": list(served)}

    app.include_router(openai_router(resolve, models, chat_max_tokens=default_max_tokens))
    return app


def _load(models: dict[str, LLM] | Sequence[str]) -> dict[str, LLM]:
    if isinstance(models, dict):
        return models
    from personalign.runtime.llm.factory import load_llm

    # "smollm2-135m-instruct" is served under its own name; "name=spec" renames.
    out = {}
    for spec in models:
        name, _, target = spec.partition("=") if "=" in spec else (
            Path(spec.split(":", 1)[-1].split("@")[0]).name, "", spec)
        out[name] = load_llm(target)
    return out


def serve_openai(models: dict[str, LLM] | Sequence[str], host: str = "127.0.0.1",
                 port: int = 8000) -> None:
    """Run the server in the foreground (uvicorn) until interrupted."""
    import uvicorn

    llms = _load(models)
    log.info("serving %s at http://%s:%d/v1", ", ".join(llms), host, port)
    uvicorn.run(create_openai_app(llms), host=host, port=port, log_level="warning")


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a background thread; yields the ``/v1`` base
    URL once the server accepts connections, and stops it on exit (tests, notebooks)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
