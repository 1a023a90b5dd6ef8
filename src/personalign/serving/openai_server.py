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
import uuid
from pathlib import Path
from typing import Iterator, Protocol, Sequence, runtime_checkable

from fastapi import Request

from personalign.runtime.llm.base import LLM
from personalign.runtime.llm.cache import cache_key
from personalign.runtime.llm.types import Prompt, SamplingParams
from personalign.serving import openai_format as fmt
from personalign.serving.http import install_errors, request_id

log = logging.getLogger(__name__)



@runtime_checkable
class NextTokenLogprobs(Protocol):
    """Optional backend hook: the ``top_k`` most likely next tokens after ``prompt`` (chat
    messages rendered with the model's template, generation prompt added) as (text, log-prob),
    most likely first."""

    def next_token_logprobs(self, prompt: Prompt, top_k: int = 20) -> list[tuple[str, float]]:
        ...


# Request bodies: the personalized service's, one input policy for both front ends.
from personalign.serving.schemas import ChatIn as ChatRequest  # noqa: E402
from personalign.serving.schemas import CompletionIn as CompletionRequest  # noqa: E402


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


def _complete(model: _Served, prompt: Prompt, params: SamplingParams,
              top: list[tuple[str, float]] | None) -> tuple[list[str], int, int]:
    """Texts and token counts; a greedy one-token answer is the most likely next token, which
    the log-prob pass already computed (letter scoring asks exactly this), so no generation."""
    if top and params.max_tokens == 1 and params.temperature == 0:
        return [top[0][0]] * params.n, model.llm.count_tokens(_prompt_text(prompt)), 1
    return model.generate(prompt, params)


def create_openai_app(llms: dict[str, LLM], *, default_max_tokens: int = 256):
    """FastAPI app serving ``llms`` (name -> LLM) under the OpenAI API shape."""
    from fastapi import FastAPI, HTTPException

    served = {name: _Served(llm) for name, llm in llms.items()}
    created = int(time.time())
    app = FastAPI(title="personalign OpenAI-compatible server")
    install_errors(app, lambda request: False)  # invalid bodies: 422, as before

    def model_of(name: str) -> _Served:
        if name not in served:
            raise HTTPException(404, f"model {name!r} is not served here "
                                f"(served: {', '.join(served)})")
        return served[name]

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created,
             "owned_by": f"personalign:{s.llm.backend}"} for name, s in served.items()]}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "models": list(served)}

    @app.post("/v1/chat/completions")
    def chat(body: ChatRequest, request: Request):
        model = model_of(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        params = fmt.sampling(body, body.max_completion_tokens or body.max_tokens,
                              default_max_tokens)
        k = (body.top_logprobs or 0) if body.logprobs else None
        top = model.top_logprobs(messages, max(1, k)) if k is not None else None
        if body.stream:
            if body.n != 1:
                raise HTTPException(400, "stream with n > 1 is not supported by this server")
            result = fmt.streamed(model.llm, messages, params, fmt.Chat([], 0, 0, None, top))
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return fmt.sse(fmt.chat_chunks(f"chatcmpl-{uuid.uuid4().hex[:24]}",
                                           int(time.time()), body.model, result, k,
                                           include_usage), request_id(request))
        texts, used_in, used_out = _complete(model, messages, params, top)
        choices = [{"index": i, "finish_reason": fmt.finish_reason(model.llm, text, params),
                    "message": {"role": "assistant", "content": text},
                    "logprobs": fmt.chat_logprobs(text, top, k)}
                   for i, text in enumerate(texts)]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": body.model, "choices": choices,
                "usage": fmt.usage(used_in, used_out)}

    @app.post("/v1/completions")
    def completions(body: CompletionRequest, request: Request):
        model = model_of(body.model)
        if body.echo:
            raise HTTPException(400, "echo is not supported by this server")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise HTTPException(400, "prompt is empty")
        params = fmt.sampling(body, body.max_tokens, 16)
        if body.stream:
            if body.n != 1 or len(prompts) != 1:
                raise HTTPException(400, "stream takes one prompt and n = 1 on this server")
            top = model.top_logprobs(prompts[0], max(1, body.logprobs)) \
                if body.logprobs is not None else None
            result = fmt.streamed(model.llm, prompts[0], params, fmt.Chat([], 0, 0, None, top))
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return fmt.sse(fmt.streamed_completion(f"cmpl-{uuid.uuid4().hex[:24]}",
                                                   int(time.time()), body.model, result,
                                                   body.logprobs, include_usage),
                           request_id(request))
        choices, total_in, total_out = [], 0, 0
        for prompt in prompts:
            top = model.top_logprobs(prompt, max(1, body.logprobs)) \
                if body.logprobs is not None else None
            texts, used_in, used_out = _complete(model, prompt, params, top)
            total_in, total_out = total_in + used_in, total_out + used_out
            choices += [{"index": len(choices) + i, "text": text,
                         "finish_reason": fmt.finish_reason(model.llm, text, params),
                         "logprobs": fmt.completion_logprobs(text, top, body.logprobs)}
                        for i, text in enumerate(texts)]
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": body.model, "choices": choices,
                "usage": fmt.usage(total_in, total_out)}

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
