"""OpenAI-compatible HTTP backend: vLLM, Ollama, llama.cpp's server, hosted providers, or the
project's own server (``personalign.serving.openai_server``).

Chat messages go to ``/chat/completions``, raw text to ``/completions``. Option scoring by
"letter" reads the option letters' log-probs of the first generated token (``logprobs`` +
``top_logprobs``); servers that offer no log-probs are detected once and scored by generating
an answer and parsing it. Connect errors, timeouts, 429 and 5xx are retried with exponential
backoff; other 4xx fail at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any, Iterator, Sequence

import httpx
from tenacity import (
    RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential,
)

from personalign.runtime.errors import ModelError
from personalign.runtime.llm.base import LLM, Generation, ProgressFn
from personalign.runtime.llm.types import (
    ChoiceItem, ChoiceResult, Prompt, SamplingParams, ScoringMethod,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
_RETRY_STATUS = {408, 409, 429}


class ServerError(ModelError):
    """The server answered with an error status (``status``), after retries where retryable."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    def __init__(self, status: int, body: str, retry_after: float | None):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status, self.body, self.retry_after = status, body, retry_after


def _retryable(e: BaseException) -> bool:
    return isinstance(e, (_Retryable, httpx.TimeoutException, httpx.NetworkError,
                          httpx.RemoteProtocolError))


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        return str(err)
    except ValueError:
        return response.text[:500]


def _letter_of(token: str, letters: Sequence[str]) -> str | None:
    """The option letter a token stands for: "A", " A", "(A", "A)", "A." (uppercase only:
    a lowercase "a" is more often the article)."""
    t = token.strip().lstrip("(*[").rstrip(").:]*,")
    return t if t in letters else None


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


class OpenAILLM(LLM):
    """A model behind an OpenAI-compatible server.

    ``scoring``: the default ``score_choices`` method ("generate" unless the server is known to
    offer log-probs: then "letter"). ``chat``: letter scoring through chat completions (the
    default) or through raw-text completions (base models). ``transport`` is for tests
    (``httpx.MockTransport``).
    """

    backend = "openai"

    def __init__(self, model: str, base_url: str | None = None, *, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 4, scoring: ScoringMethod = "generate",
                 chat: bool = True, top_logprobs: int = 20, backoff: float = 0.5,
                 backoff_max: float = 20.0, transport: httpx.BaseTransport | None = None,
                 cache=True):
        super().__init__(cache=cache)
        if not model:
            raise ModelError("the OpenAI backend needs a model name (openai:MODEL@URL)")
        self.model_id = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL")
                         or DEFAULT_BASE_URL).rstrip("/")
        self.default_scoring = scoring
        self.chat = chat
        self.top_logprobs = top_logprobs
        self.max_retries = max_retries
        self.timeout = timeout
        self._backoff = (backoff, backoff_max)
        # None: not known yet; False: the server returned none, so letters are generated.
        self.logprobs_supported: bool | None = None
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers,
                                    timeout=httpx.Timeout(timeout), transport=transport)

    def _identity(self) -> tuple[str, str]:
        # The same model name on two servers may be two different models.
        return (self.backend, f"{self.model_id}@{self.base_url}")

    # ------------------------------------------------------------------ HTTP
    def _wait(self, state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        base = wait_exponential(multiplier=self._backoff[0], max=self._backoff[1])(state)
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return min(max(exc.retry_after, base), self._backoff[1])
        return base

    def _post_once(self, path: str, body: dict) -> dict:
        response = self._client.post(path, json=body)
        status = response.status_code
        if status in _RETRY_STATUS or status >= 500:
            retry_after = response.headers.get("retry-after")
            try:
                seconds = float(retry_after) if retry_after else None
            except ValueError:
                seconds = None
            raise _Retryable(status, _error_text(response), seconds)
        if status >= 400:
            raise ServerError(f"{self.base_url}{path} rejected the request (HTTP {status}): "
                              f"{_error_text(response)}", status=status)
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"{self.base_url}{path} did not return JSON: "
                              f"{response.text[:200]!r}", status=status) from None

    def post(self, path: str, body: dict) -> dict:
        """POST ``body`` to ``path`` under the base URL with retries; JSON response."""
        retrying = Retrying(stop=stop_after_attempt(self.max_retries + 1), wait=self._wait,
                            retry=retry_if_exception(_retryable), reraise=False)
        try:
            return retrying(self._post_once, path, body)
        except RetryError as e:
            last = e.last_attempt.exception()
            attempts = e.last_attempt.attempt_number
            if isinstance(last, _Retryable):
                raise ServerError(f"{self.base_url}{path} kept failing after {attempts} "
                                  f"attempt(s): {last}", status=last.status) from None
            kind = "timed out" if isinstance(last, httpx.TimeoutException) else "unreachable"
            raise ServerError(f"OpenAI-compatible server {self.base_url} {kind} after "
                              f"{attempts} attempt(s) ({type(last).__name__}: {last}); is it "
                              "running? (set base_url or OPENAI_BASE_URL)") from None

    def list_models(self) -> list[str]:
        try:
            response = self._client.get("/models")
            response.raise_for_status()
            return [m["id"] for m in response.json().get("data", [])]
        except (httpx.HTTPError, ValueError, KeyError) as e:
            raise ServerError(f"cannot list models at {self.base_url}: {e}") from None

    # ------------------------------------------------------------------ requests
    def _request(self, prompt: Prompt, params: SamplingParams, n: int, **extra) -> tuple[str, dict]:
        body: dict[str, Any] = {"model": self.model_id, "n": n,
                                "temperature": params.temperature,
                                "max_tokens": params.max_tokens, "top_p": params.top_p,
                                "seed": params.seed}
        if params.ignore_eos:
            body["ignore_eos"] = True  # a vLLM extension
        if params.stop:
            body["stop"] = list(params.stop)
        body.update(extra)
        if isinstance(prompt, str):
            return "/completions", {**body, "prompt": prompt}
        return "/chat/completions", {**body, "messages": list(prompt)}

    @staticmethod
    def _texts(response: dict) -> list[str]:
        choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
        texts = []
        for c in choices:
            if "message" in c:
                texts.append((c["message"] or {}).get("content") or "")
            else:
                texts.append(c.get("text") or "")
        return texts

    def _generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        out = []
        for prompt in prompts:
            texts: list[str] = []
            gen = Generation([])
            # Some servers (Ollama, llama.cpp) ignore n: ask again for the missing samples.
            for attempt in range(params.n):
                want = params.n - len(texts)
                seeded = SamplingParams(**{**params.__dict__, "seed": params.seed + attempt})
                path, body = self._request(prompt, seeded, want)
                response = self.post(path, body)
                got = self._texts(response)[:want]
                usage = response.get("usage") or {}
                gen.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                gen.completion_tokens += int(usage.get("completion_tokens") or 0)
                if not got:
                    raise ServerError(f"{self.base_url}{path} returned no choices")
                texts += got
                if len(texts) >= params.n:
                    break
                if params.temperature == 0:  # greedy: the rest would be identical
                    texts += [texts[0]] * (params.n - len(texts))
                    break
            gen.texts = texts
            out.append(gen)
        return out

    def _stream(self, prompt: Prompt, params: SamplingParams, usage: Generation
                ) -> Iterator[str]:
        """The server's own stream (server-sent events), piece by piece. Not retried: a
        retry after the first piece would send the answer twice."""
        path, body = self._request(prompt, params, 1, stream=True,
                                   stream_options={"include_usage": True})
        with self._client.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise ServerError(f"{self.base_url}{path} refused the stream (HTTP "
                                  f"{response.status_code}): {_error_text(response)}",
                                  status=response.status_code)
            written = []
            for line in response.iter_lines():
                data = line[5:].strip() if line.startswith("data:") else ""
                if not data:
                    continue
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    usage.prompt_tokens = int(event["usage"].get("prompt_tokens") or 0)
                    usage.completion_tokens = int(event["usage"].get("completion_tokens") or 0)
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if "delta" in choice \
                        else choice.get("text")
                    if piece:
                        written.append(piece)
                        yield piece
            if not usage.completion_tokens:  # a server that sends no usage
                usage.completion_tokens = self.count_tokens("".join(written))

    # ------------------------------------------------------------------ scoring
    def _score(self, items: Sequence[ChoiceItem], method: ScoringMethod,
               progress: ProgressFn) -> list[ChoiceResult]:
        if method != "letter":
            raise ModelError(f"the OpenAI backend scores by 'letter' (log-probs) or 'generate', "
                             f"not {method!r}")
        results = []
        for item in items:
            result = None if self.logprobs_supported is False else self._score_letter(item)
            if result is None:
                result = self._score_by_generation([item], lambda k: None)[0]
            results.append(result)
            progress(1)
        return results

    def _top_logprobs(self, item: ChoiceItem) -> list[tuple[str, float]] | None:
        """Top tokens of the first generated token, or None when the server gives none."""
        params = SamplingParams(n=1, temperature=0.0, max_tokens=1)
        if self.chat:
            path, body = self._request(self.choice_prompt(item), params, 1, logprobs=True,
                                       top_logprobs=self.top_logprobs)
        else:
            path, body = self._request(item.prefix + item.prompt, params, 1,
                                       logprobs=self.top_logprobs)
        try:
            response = self.post(path, body)
        except ServerError as e:
            if e.status in (400, 422):  # the request shape (logprobs) was refused
                log.warning("%s refused a log-prob request (%s); scoring by generation",
                            self.base_url, e)
                return None
            raise
        usage = response.get("usage") or {}
        self._count(calls=1, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0))
        choice = (response.get("choices") or [{}])[0]
        lp = choice.get("logprobs")
        if not lp:
            return None
        if self.chat:
            content = lp.get("content") or []
            if not content:
                return None
            return [(t["token"], float(t["logprob"]))
                    for t in content[0].get("top_logprobs") or []] or None
        tops = lp.get("top_logprobs") or []
        if not tops or not tops[0]:
            return None
        return [(tok, float(v)) for tok, v in tops[0].items()]

    def _score_letter(self, item: ChoiceItem) -> ChoiceResult | None:
        """Normalized letter log-probs, or None to score this item by generation."""
        top = self._top_logprobs(item)
        if top is None:
            if self.logprobs_supported is None:
                log.warning("%s offers no log-probs for %s: scoring by generate-and-parse",
                            self.base_url, self.model_id)
            self.logprobs_supported = False
            return None
        self.logprobs_supported = True
        by_letter: dict[str, list[float]] = {}
        for token, value in top:
            letter = _letter_of(token, item.letters)
            if letter is not None:
                by_letter.setdefault(letter, []).append(value)
        if not by_letter:
            return None  # the model would not answer with a letter: parse a generated answer
        # A letter outside the top-k is at most as likely as the least likely listed token.
        floor = min(v for _, v in top)
        raw = [_logsumexp(by_letter[x]) if x in by_letter else floor for x in item.letters]
        norm = _logsumexp(raw)
        logprobs = [v - norm for v in raw]
        return ChoiceResult(logprobs=logprobs,
                            choice=max(range(len(logprobs)), key=logprobs.__getitem__),
                            raw=top[0][0])

    def count_tokens(self, text: str) -> int:
        """Estimate (no tokenizer over HTTP): ~1.3 tokens per word, punctuation separate."""
        words = re.findall(r"\w+", text)
        punct = re.findall(r"[^\w\s]", text)
        return max(1, round(1.3 * len(words)) + len(punct))

    def close(self) -> None:
        self._client.close()
        super().close()
