"""The OpenAI API's response shapes, for both OpenAI-compatible front ends (the personalized
service and the bare model server): log-probs, usage, finish reasons, sampling parameters
from a request, and server-sent event streams."""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from fastapi.responses import StreamingResponse

from personalign.runtime.errors import PersonalignError
from personalign.runtime.llm.base import LLM, Generation
from personalign.runtime.llm.types import SamplingParams
from personalign.serving.http import error_body

log = logging.getLogger(__name__)


@dataclass
class Chat:
    """An answer to an OpenAI request: its texts, token counts and finish reasons, the
    first-token log-probs and, in the personalized service, what was applied."""

    texts: list[str]
    prompt_tokens: int
    completion_tokens: int
    personalization: dict[str, Any] | None
    top_logprobs: list[tuple[str, float]] | None = None
    finish: list[str] = field(default_factory=list)
    #: when streamed: the text's pieces as the model writes them; ``texts``, the token counts
    #: and ``finish`` are filled in once the pieces run out
    pieces: Iterator[str] | None = None


def streamed(llm: LLM, prompt, params: SamplingParams, chat: Chat) -> Chat:
    """``chat`` with the pieces of ``llm``'s answer as it writes them; the rest of ``chat`` is
    filled in when they run out."""
    usage = Generation([])

    def pieces() -> Iterator[str]:
        yield from llm.stream(prompt, params, usage)
        chat.texts = usage.texts
        chat.prompt_tokens, chat.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        chat.finish = [finish_reason(llm, t, params) for t in usage.texts]

    chat.pieces = pieces()
    return chat


def first_token(text: str, top: list[tuple[str, float]]) -> tuple[str, float]:
    """The listed token the text starts with (greedy: the most likely one)."""
    for token, value in top:
        if token and text.startswith(token):
            return token, value
    return top[0]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(text: str, top: list[tuple[str, float]] | None, k: int | None
                  ) -> dict | None:
    """A chat choice's ``logprobs``: the first token of ``text`` and the ``k`` most likely
    first tokens (None when not asked for or not known)."""
    if k is None or not top:
        return None
    token, value = first_token(text, top)
    return {"content": [{"token": token, "logprob": value, "bytes": list(token.encode()),
                         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                          for t, v in top[:k]]}]}


def completion_logprobs(text: str, top: list[tuple[str, float]] | None, k: int | None
                        ) -> dict | None:
    """A completion choice's ``logprobs`` (the legacy shape), first token only."""
    if k is None or not top:
        return None
    token, value = first_token(text, top)
    listed: dict[str, float] = {}
    for t, v in top[:k]:
        listed.setdefault(t, v)  # two ids can decode to the same text
    return {"tokens": [token], "token_logprobs": [value], "top_logprobs": [listed],
            "text_offset": [0]}


def finish_reason(llm: LLM, text: str, params: SamplingParams) -> str:
    return "length" if llm.count_tokens(text) >= params.max_tokens else "stop"


def sampling(body, max_tokens: int | None, default: int) -> SamplingParams:
    """The sampling parameters of an OpenAI request body."""
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return SamplingParams(n=body.n, temperature=body.temperature,
                          max_tokens=max_tokens or default, stop=stop, top_p=body.top_p,
                          seed=(body.seed or 0) % 2 ** 31)  # what every backend takes


def pieces(text: str) -> list[str]:
    """A finished text in word-sized pieces (what is sent when it was not generated as a
    stream: several samples, or a method that answers in one piece)."""
    out, start = [], 0
    for i in range(1, len(text)):
        if text[i] == " " and text[i - 1] != " ":
            out.append(text[start:i])
            start = i
    out.append(text[start:])
    return [p for p in out if p]


def own_thread(source: Iterator[str]) -> Iterator[str]:
    """``source`` drawn on one thread of their own and handed over as they come: a model's
    generator holds its lock and must not hop between the threads that serve a response.
    When the client goes away the thread stops at the next piece."""
    handoff: queue.Queue = queue.Queue()
    gone = threading.Event()
    end = object()

    def draw() -> None:
        try:
            for piece in source:
                handoff.put(piece)
                if gone.is_set():
                    break
        except BaseException as e:  # re-raised on the serving side
            handoff.put(e)
        finally:
            source.close()
            handoff.put(end)

    threading.Thread(target=draw, name="stream", daemon=True).start()
    try:
        while (item := handoff.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        gone.set()


def sse(events: Iterator[dict], rid: str | None) -> StreamingResponse:
    def body() -> Iterator[str]:
        try:
            for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except Exception as e:  # the status line is sent: the error goes as an event
            log.exception("stream of request %s failed", rid)
            message = str(e) if isinstance(e, PersonalignError) else "internal error"
            yield f"data: {json.dumps(error_body(message, 'server_error', None, None, rid))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def applied_field(personalization: dict | None) -> dict:
    """A response's or chunk's ``personalization`` field, where something was applied (the
    personalized service only)."""
    return {} if personalization is None else {"personalization": personalization}


def _text_pieces(result) -> Iterator[tuple[int, str | None]]:
    """(choice index, piece) of each answer, then (index, None) as each one ends: the model's
    own pieces when it streamed, else the finished texts cut into words."""
    if result.pieces is not None:
        for piece in own_thread(result.pieces):
            yield 0, piece
        yield 0, None
        return
    for i, text in enumerate(result.texts):
        for piece in pieces(text):
            yield i, piece
        yield i, None


def chat_chunks(cid: str, created: int, model: str, result, top_k: int | None,
                 include_usage: bool) -> Iterator[dict]:
    def chunk(choices: list[dict], **extra) -> dict:
        return {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": choices, **extra}

    first = True
    for i, piece in _text_pieces(result):
        if first:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None, "logprobs": None}],
                        **applied_field(result.personalization))
        if piece is None:
            yield chunk([{"index": i, "delta": {}, "finish_reason": result.finish[i],
                          "logprobs": None}])
            first = True
            continue
        yield chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None,
                      "logprobs": chat_logprobs(piece, result.top_logprobs, top_k) if first else None}])
        first = False
    if include_usage:
        yield chunk([], usage=usage(result.prompt_tokens, result.completion_tokens))


def streamed_completion(cid: str, created: int, model: str, result, k: int | None,
                         include_usage: bool) -> Iterator[dict]:
    def chunk(items: list[dict], **extra) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": items, **extra}

    first = True
    for _, piece in _text_pieces(result):
        if piece is None:
            yield chunk([{"index": 0, "text": "", "finish_reason": result.finish[0],
                          "logprobs": None}])
            continue
        yield chunk([{"index": 0, "text": piece, "finish_reason": None,
                      "logprobs": completion_logprobs(piece, result.top_logprobs, k) if first else None}],
                    **applied_field(result.personalization))
        first = False
    if include_usage:
        yield chunk([], usage=usage(result.prompt_tokens, result.completion_tokens))


def completion_chunks(cid: str, created: int, model: str, choices: list[dict], applied,
                       usage: dict | None) -> Iterator[dict]:
    def chunk(items: list[dict], **extra) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": items, **extra}

    for c in choices:
        parts = pieces(c["text"]) or [""]
        for j, piece in enumerate(parts):
            last = j == len(parts) - 1
            yield chunk([{"index": c["index"], "text": piece,
                          "finish_reason": c["finish_reason"] if last else None,
                          "logprobs": c["logprobs"] if j == 0 else None}],
                        **applied_field(applied))
    if usage is not None:
        yield chunk([], usage=usage)
