"""The OpenAI-compatible API, personalized for the key's user (an admin names one with
``model: "personalign/<user_id>"``): the one set of OpenAI routes
(:mod:`personalign.serving.openai_routes`) answered by the user's personalization."""

from __future__ import annotations

from fastapi import Request

from personalign.runtime.errors import DataError
from personalign.runtime.llm.types import SamplingParams
from personalign.service.core import PersonalizationService, Principal
from personalign.service.routes.deps import service_of, who
from personalign.serving import openai_format as fmt
from personalign.serving.openai_routes import PATHS, openai_router

MODEL_PREFIX = "personalign"
__all__ = ["PATHS", "router"]


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


class _Personalized:
    """The responder of one user: a completion prompt is answered as the user's message,
    personalized alike."""

    def __init__(self, service: PersonalizationService, user_id: str):
        self.service, self.user_id = service, user_id

    def check(self, texts: list[str]) -> None:
        total, most = sum(len(t) for t in texts), self.service.limits.max_chat_chars
        if total > most:
            raise DataError(f"{total} characters of text; at most {most}", field="messages")

    def chat(self, messages, params: SamplingParams, top_logprobs: int | None,
             stream: bool) -> fmt.Chat:
        return self.service.chat(self.user_id, messages, params, top_logprobs, stream=stream)

    def complete(self, prompt: str, params: SamplingParams, top_logprobs: int | None,
                 stream: bool) -> fmt.Chat:
        return self.chat([{"role": "user", "content": prompt}], params, top_logprobs, stream)


def _resolve(request: Request, p: Principal, model: str) -> _Personalized:
    service = service_of(request)
    return _Personalized(service, _user_of_model(service, p, model))


def _models(request: Request, p: Principal) -> list[dict]:
    ids = [MODEL_PREFIX] if not p.admin else []
    if p.user_id:
        ids.append(f"{MODEL_PREFIX}/{p.user_id}")
    return [{"id": i, "object": "model", "created": 0, "owned_by": "personalign"} for i in ids]


router = openai_router(_resolve, _models, caller=who)
