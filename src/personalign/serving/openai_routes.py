"""The OpenAI-compatible routes, written once: ``/v1/models``, ``/v1/chat/completions`` and
``/v1/completions`` (streams as server-sent events). What answers a request is a
:class:`Responder` that the app resolves from the caller and the request's model name: the
bare model server's LLM (:mod:`.openai_server`) or the personalization service's user
(``personalign.service.routes.openai``)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Protocol

from fastapi import APIRouter, Depends, Request

from personalign.runtime.errors import DataError
from personalign.runtime.llm.types import Message, SamplingParams
from personalign.serving import openai_format as fmt
from personalign.serving.http import request_id
from personalign.serving.schemas import ChatIn, CompletionIn

#: where an invalid request is 400 (OpenAI's status) rather than 422
PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models")


class Responder(Protocol):
    """What answers the requests for one model name and caller."""

    def check(self, texts: list[str]) -> None:
        """Refuse a request's texts (too long for this server) with a ``DataError``."""

    def chat(self, messages: list[Message], params: SamplingParams, top_logprobs: int | None,
             stream: bool) -> fmt.Chat:
        """The answer to a chat; ``stream`` (one choice): its pieces as they are written."""

    def complete(self, prompt: str, params: SamplingParams, top_logprobs: int | None,
                 stream: bool) -> fmt.Chat:
        """The answer to one completion prompt, as :meth:`chat`."""


def nobody() -> None:
    """The caller of an app without keys."""
    return None


def openai_router(resolve: Callable[[Request, Any, str], Responder],
                  models: Callable[[Request, Any], list[dict]], caller: Callable = nobody,
                  chat_max_tokens: int = 256) -> APIRouter:
    """The routes; ``resolve(request, caller, model)`` gives the responder of a request (or
    raises the error that says why not), ``models(request, caller)`` the model objects the
    caller may name, ``caller`` is the dependency that says who calls."""
    router = APIRouter(tags=["openai"])

    @router.get("/v1/models")
    def list_models(request: Request, who: Any = Depends(caller)) -> dict:
        return {"object": "list", "data": models(request, who)}

    @router.post("/v1/chat/completions")
    def chat(body: ChatIn, request: Request, who: Any = Depends(caller)):
        responder = resolve(request, who, body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        responder.check([m["content"] for m in messages])
        params = fmt.sampling(body, body.max_completion_tokens or body.max_tokens,
                              chat_max_tokens)
        top_k = (body.top_logprobs or 0) if body.logprobs else None
        result = responder.chat(messages, params, top_k, body.stream)
        created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return fmt.sse(fmt.chat_chunks(cid, created, body.model, result, top_k,
                                           include_usage), request_id(request))
        return {"id": cid, "object": "chat.completion", "created": created,
                "model": body.model, **fmt.applied_field(result.personalization),
                "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                             "finish_reason": result.finish[i],
                             "logprobs": fmt.chat_logprobs(t, result.top_logprobs, top_k)}
                            for i, t in enumerate(result.texts)],
                "usage": fmt.usage(result.prompt_tokens, result.completion_tokens)}

    @router.post("/v1/completions")
    def completions(body: CompletionIn, request: Request, who: Any = Depends(caller)):
        responder = resolve(request, who, body.model)
        if body.echo:
            raise DataError("echo is not supported by this server", field="echo")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts or not all(x.strip() for x in prompts):
            raise DataError("empty", field="prompt")
        responder.check(prompts)
        params = fmt.sampling(body, body.max_tokens, 16)
        created, cid = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream and len(prompts) == 1 and body.n == 1:
            result = responder.complete(prompts[0], params, body.logprobs, True)
            return fmt.sse(fmt.streamed_completion(cid, created, body.model, result,
                                                   body.logprobs, include_usage),
                           request_id(request))
        choices, used_in, used_out, applied = [], 0, 0, None
        for prompt in prompts:
            result = responder.complete(prompt, params, body.logprobs, False)
            used_in, used_out = used_in + result.prompt_tokens, used_out + result.completion_tokens
            applied = result.personalization
            choices += [{"index": len(choices) + i, "text": text,
                         "finish_reason": result.finish[i],
                         "logprobs": fmt.completion_logprobs(text, result.top_logprobs,
                                                             body.logprobs)}
                        for i, text in enumerate(result.texts)]
        usage = fmt.usage(used_in, used_out)
        if body.stream:  # several prompts or samples: generated first, then sent in pieces
            return fmt.sse(fmt.completion_chunks(cid, created, body.model, choices, applied,
                                                 usage if include_usage else None),
                           request_id(request))
        return {"id": cid, "object": "text_completion", "created": created,
                "model": body.model, **fmt.applied_field(applied), "choices": choices, "usage": usage}

    return router

