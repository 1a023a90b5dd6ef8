"""The OpenAI-compatible API, personalized for the key's user (an admin names one with
``model: "personalign/<user_id>"``): models, chat completions, completions, streaming as
server-sent events."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request

from personalign.runtime.errors import DataError
from personalign.serving import openai_format as fmt
from personalign.service.core import PersonalizationService, Principal
from personalign.serving.http import request_id
from personalign.service.routes.deps import service_of, who
from personalign.serving.schemas import ChatIn, CompletionIn

router = APIRouter(tags=["openai"])

MODEL_PREFIX = "personalign"
#: where an invalid request is 400 (OpenAI's status) rather than 422
PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models")


def _user_of_model(service: PersonalizationService, p: Principal, model: str) -> str:
    name, _, user_id = model.partition("/")
    if name != MODEL_PREFIX:
        raise DataError(f"unknown model {model!r}: use '{MODEL_PREFIX}' (your key's user) "
                        f"or '{MODEL_PREFIX}/<user_id>'", field="model")
    if not user_id:
        if p.admin:
            raise DataError(f"the admin key must name the user: '{MODEL_PREFIX}/<user_id>'",
                            field="model")
        user_id = p.user_id or ""
    return service.allow(p, user_id)


def _check_size(service: PersonalizationService, texts: list[str]) -> None:
    total, most = sum(len(t) for t in texts), service.limits.max_chat_chars
    if total > most:
        raise DataError(f"{total} characters of text; at most {most}", field="messages")


@router.get("/v1/models")
def list_models(p: Principal = Depends(who)) -> dict:
    ids = [MODEL_PREFIX] if not p.admin else []
    if p.user_id:
        ids.append(f"{MODEL_PREFIX}/{p.user_id}")
    return {"object": "list", "data": [
        {"id": i, "object": "model", "created": 0, "owned_by": "personalign"} for i in ids]}


@router.post("/v1/chat/completions")
def chat(body: ChatIn, request: Request, p: Principal = Depends(who),
         service: PersonalizationService = Depends(service_of)):
    user_id = _user_of_model(service, p, body.model)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    _check_size(service, [m["content"] for m in messages])
    params = fmt.sampling(body, body.max_completion_tokens or body.max_tokens, 256)
    top_k = (body.top_logprobs or 0) if body.logprobs else None
    result = service.chat(user_id, messages, params, top_k, stream=body.stream)
    created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return fmt.sse(fmt.chat_chunks(cid, created, body.model, result, top_k, include_usage),
                       request_id(request))
    return {"id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "personalization": result.personalization,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                         "finish_reason": result.finish[i],
                         "logprobs": fmt.chat_logprobs(t, result.top_logprobs, top_k)}
                        for i, t in enumerate(result.texts)],
            "usage": fmt.usage(result.prompt_tokens, result.completion_tokens)}


@router.post("/v1/completions")
def completions(body: CompletionIn, request: Request, p: Principal = Depends(who),
                service: PersonalizationService = Depends(service_of)):
    user_id = _user_of_model(service, p, body.model)
    if body.echo:
        raise DataError("echo is not supported by this server", field="echo")
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts or not all(x.strip() for x in prompts):
        raise DataError("empty", field="prompt")
    _check_size(service, prompts)
    params = fmt.sampling(body, body.max_tokens, 16)
    created, cid = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream and len(prompts) == 1 and body.n == 1:
        result = service.chat(user_id, [{"role": "user", "content": prompts[0]}], params,
                              body.logprobs, stream=True)
        return fmt.sse(fmt.streamed_completion(cid, created, body.model, result, body.logprobs,
                                               include_usage), request_id(request))
    choices, used_in, used_out, applied = [], 0, 0, None
    for prompt in prompts:
        # A completion prompt is answered as the user's message, personalized alike.
        result = service.chat(user_id, [{"role": "user", "content": prompt}], params,
                              body.logprobs)
        used_in, used_out = used_in + result.prompt_tokens, used_out + result.completion_tokens
        applied = result.personalization
        for i, text in enumerate(result.texts):
            choices.append({"index": len(choices), "text": text,
                            "finish_reason": result.finish[i],
                            "logprobs": fmt.completion_logprobs(text, result.top_logprobs,
                                                                body.logprobs)})
    usage = fmt.usage(used_in, used_out)
    if body.stream:  # several prompts or samples: generated first, then sent in pieces
        return fmt.sse(fmt.completion_chunks(cid, created, body.model, choices, applied,
                                             usage if include_usage else None),
                       request_id(request))
    return {"id": cid, "object": "text_completion", "created": created, "model": body.model,
            "personalization": applied, "choices": choices, "usage": usage}
