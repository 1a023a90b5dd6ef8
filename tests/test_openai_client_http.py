"""The OpenAI-compatible client against a real HTTP server on loopback: a stub that answers
429, 503, 500, 400, slowly, or without log-probs, as a provider or a loading vLLM would.

The retries and timeouts are observed from the server's side: how many requests arrived and
when (``time.monotonic`` at each arrival), against the client's configured backoff, Retry-After
and timeout. Bounds are generous upward (a loaded 2-core machine) but each lower bound is the
configured wait, and each upper bound is below what a client ignoring the setting would take.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import pytest

from personalign.runtime.errors import ModelError
from personalign.runtime.llm.openai_backend import OpenAILLM, ServerError
from personalign.runtime.llm.types import ChoiceItem

ITEM = ChoiceItem("Question: Pick one.\n(A) red\n(B) blue\n(C) green\nAnswer:",
                  ("red", "blue", "green"))
SLACK = 1.5  # seconds a loaded machine may add to a wait


@dataclass
class Answer:
    status: int = 200
    body: dict | str | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before the answer is sent


def chat(text: str, logprobs: dict | None = None) -> Answer:
    return Answer(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                             "content": text},
                                     "finish_reason": "stop", "logprobs": logprobs}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 2}})


@dataclass
class Arrival:
    at: float
    path: str
    body: dict


class Stub:
    """A threaded HTTP server on 127.0.0.1 (an ephemeral port) answering each POST with
    ``answer(body, n)`` (n: the request's 0-based number), recording every arrival."""

    def __init__(self, answer: Callable[[dict, int], Answer]):
        self.answer = answer
        self.arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with stub._lock:
                    n = len(stub.arrivals)
                    stub.arrivals.append(Arrival(time.monotonic(), self.path, body))
                ans = stub.answer(body, n)
                time.sleep(ans.delay)
                payload = ans.body if isinstance(ans.body, str) else json.dumps(ans.body or {})
                try:
                    self.send_response(ans.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload.encode())))
                    for k, v in ans.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (its timeout)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def gaps(self) -> list[float]:
        """Seconds between consecutive arrivals."""
        times = [a.at for a in self.arrivals]
        return [b - a for a, b in itertools.pairwise(times)]


def scripted(*answers: Answer) -> Callable[[dict, int], Answer]:
    """The n-th request gets the n-th answer; the last one repeats."""
    return lambda body, n: answers[min(n, len(answers) - 1)]


def client(stub: Stub, **kw) -> OpenAILLM:
    kw.setdefault("cache", False)
    return OpenAILLM("m", stub.url, **kw)


def test_429_waits_as_retry_after_says_then_succeeds():
    busy = Answer(429, {"error": {"message": "rate limited"}}, {"retry-after": "0.6"})
    with Stub(scripted(busy, chat("finally"))) as stub:
        # Backoff alone would wait 0.01 s: the 0.6 s gap is the server's Retry-After.
        llm = client(stub, backoff=0.01, backoff_max=10, max_retries=3)
        assert llm.generate([[{"role": "user", "content": "hi"}]]) == [["finally"]]
    assert len(stub.arrivals) == 2
    (gap,) = stub.gaps()
    assert 0.6 <= gap < 0.6 + SLACK


def test_retry_after_is_capped_at_backoff_max():
    busy = Answer(429, {"error": {"message": "come back in a minute"}}, {"retry-after": "60"})
    with Stub(scripted(busy, chat("ok"))) as stub:
        llm = client(stub, backoff=0.01, backoff_max=0.5, max_retries=1)
        assert llm.generate(["x"]) == [["ok"]]
    (gap,) = stub.gaps()
    assert 0.5 <= gap < 0.5 + SLACK  # not the 60 s the server asked for


def test_503_and_500_are_retried_with_exponential_backoff():
    loading = Answer(503, {"error": {"message": "model is loading"}})
    boom = Answer(500, "Internal Server Error")
    with Stub(scripted(loading, boom, chat("up"))) as stub:
        llm = client(stub, backoff=0.3, backoff_max=10, max_retries=4)
        start = time.monotonic()
        assert llm.generate(["x"]) == [["up"]]
        elapsed = time.monotonic() - start
    assert len(stub.arrivals) == 3  # two failures, one success: no more requests
    first, second = stub.gaps()
    # tenacity's exponential wait: backoff * 2 ** (attempt - 1) after attempt 1, 2, ...
    assert 0.3 <= first < 0.3 + SLACK
    assert 0.6 <= second < 0.6 + SLACK
    assert elapsed >= 0.9


def test_a_server_that_keeps_failing_gets_exactly_max_retries_plus_one_requests():
    with Stub(scripted(Answer(500, {"error": {"message": "boom"}}))) as stub:
        llm = client(stub, backoff=0.05, max_retries=2)
        with pytest.raises(ServerError, match=r"kept failing after 3 attempt\(s\).*500.*boom") \
                as info:
            llm.generate(["x"])
    assert info.value.status == 500
    assert len(stub.arrivals) == 3
    assert all(g >= 0.05 for g in stub.gaps())


def test_client_errors_are_not_retried():
    bad = Answer(400, {"error": {"message": "temperature must be <= 2"}})
    with Stub(scripted(bad)) as stub:
        llm = client(stub, backoff=0.05, max_retries=5)
        with pytest.raises(ServerError, match="HTTP 400.*temperature must be") as info:
            llm.generate(["x"])
    assert info.value.status == 400 and len(stub.arrivals) == 1


def test_a_slow_server_times_out_on_every_attempt():
    slow = Answer(200, chat("too late").body, delay=3.0)
    with Stub(scripted(slow)) as stub:
        llm = client(stub, timeout=0.4, backoff=0.05, max_retries=1)
        start = time.monotonic()
        # A client without the timeout would get "too late" after 3 s: it must raise instead.
        with pytest.raises(ModelError, match=r"timed out after 2 attempt\(s\)"):
            llm.generate(["x"])
        elapsed = time.monotonic() - start
    assert len(stub.arrivals) == 2
    (gap,) = stub.gaps()
    assert gap >= 0.4 + 0.05  # the first attempt waited its timeout, then the backoff
    assert 2 * 0.4 + 0.05 <= elapsed < 3.0  # both attempts cut short, well before the answer


def test_a_slow_answer_within_the_timeout_is_waited_for():
    with Stub(scripted(Answer(200, chat("worth the wait").body, delay=0.5))) as stub:
        llm = client(stub, timeout=5, backoff=0.05, max_retries=2)
        start = time.monotonic()
        assert llm.generate(["x"]) == [["worth the wait"]]
        assert time.monotonic() - start >= 0.5
    assert len(stub.arrivals) == 1


@pytest.mark.parametrize("refusal", ["http-400", "no-logprobs-field"])
def test_refused_logprobs_fall_back_to_generation_once(refusal):
    def answer(body, n):
        if body.get("logprobs"):
            if refusal == "http-400":
                return Answer(400, {"error": {"message": "logprobs are not supported"}})
            return chat("B")  # answers, silently without log-probs
        return chat("(B) blue")

    second = ChoiceItem(ITEM.prompt.replace("Pick one", "Pick another"), ITEM.options)
    with Stub(answer) as stub:
        llm = client(stub, scoring="letter", backoff=0.05, max_retries=3)
        first_res, second_res = llm.score_choices([ITEM, second])
    assert (first_res.choice, second_res.choice) == (1, 1)
    assert first_res.raw == "(B) blue" and first_res.logprobs[1] == 0.0
    assert math.isinf(first_res.logprobs[0])
    assert llm.logprobs_supported is False
    # One log-prob request (a 400 is not retried), then generation only: the second item
    # asks for no log-probs.
    asked = [bool(a.body.get("logprobs")) for a in stub.arrivals]
    assert asked == [True, False, False]
    assert all(a.path == "/v1/chat/completions" for a in stub.arrivals)


def test_logprobs_from_the_server_give_the_letter_probabilities():
    top = [(" B", math.log(0.5)), ("B", math.log(0.1)), ("(A", math.log(0.2)),
           ("The", math.log(0.1)), ("x", math.log(0.01))]
    logprobs = {"content": [{"token": " B", "logprob": math.log(0.5),
                             "top_logprobs": [{"token": t, "logprob": v} for t, v in top]}]}
    with Stub(scripted(chat(" B", logprobs))) as stub:
        llm = client(stub, scoring="letter")
        (res,) = llm.score_choices([ITEM])
    body = stub.arrivals[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    # B = 0.5 + 0.1 (two spellings), A = 0.2, C unlisted: at most the least listed, 0.01.
    assert [math.exp(v) for v in res.logprobs] == pytest.approx([0.2 / 0.81, 0.6 / 0.81,
                                                                 0.01 / 0.81])
    assert res.choice == 1 and llm.logprobs_supported is True
