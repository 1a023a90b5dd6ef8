"""The OpenAI-compatible HTTP backend and the project's own OpenAI-compatible server.

Unit level: request shapes, retries/backoff and the log-prob fallback with
``httpx.MockTransport`` (against a real loopback server answering 429, 503, 500 and slowly:
``test_openai_client_http.py``); the server with FakeLLM behind it. Real level: the server on a loopback
port serving the embedded SmolLM2 through TransformersLLM, used by OpenAILLM over HTTP.
"""

from __future__ import annotations

import json
import math
import socket

import httpx
import pytest

from personalign.runtime.errors import ModelError
from personalign.runtime.llm.cache import CallCache
from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.llm.openai_backend import OpenAILLM, ServerError
from personalign.runtime.llm.types import ChoiceItem, SamplingParams
from personalign.serving.openai_server import (
    NextTokenLogprobs, create_openai_app, serve_in_thread,
)

ITEM = ChoiceItem("Question: Pick one.\n(A) red\n(B) blue\n(C) green\nAnswer:",
                  ("red", "blue", "green"))


def _chat_response(text="ok", top=None, n=1, usage=(7, 3)):
    choices = []
    for i in range(n):
        choice = {"index": i, "message": {"role": "assistant", "content": text},
                  "finish_reason": "stop", "logprobs": None}
        if top is not None:
            choice["logprobs"] = {"content": [{"token": top[0][0], "logprob": top[0][1],
                                               "top_logprobs": [{"token": t, "logprob": v}
                                                                for t, v in top]}]}
        choices.append(choice)
    return {"choices": choices, "usage": {"prompt_tokens": usage[0],
                                          "completion_tokens": usage[1]}}


class Script:
    """A MockTransport handler answering from a list of responses/exceptions, recording
    every request."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.path, body))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)


def _client(script: Script, **kw) -> OpenAILLM:
    kw.setdefault("cache", False)
    kw.setdefault("backoff", 0.0)  # no sleeping in unit tests
    return OpenAILLM("m", "http://testserver/v1", transport=httpx.MockTransport(script), **kw)


# ----------------------------------------------------------------------------- requests
def test_chat_and_raw_requests_and_usage():
    script = Script(_chat_response("hello"), {"choices": [{"index": 0, "text": " world"}],
                                              "usage": {"prompt_tokens": 2,
                                                        "completion_tokens": 1}})
    llm = _client(script)
    params = SamplingParams(n=1, temperature=0.5, max_tokens=9, stop=("\n",), top_p=0.9, seed=4)
    assert llm.generate([[{"role": "user", "content": "hi"}]], params) == [["hello"]]
    assert llm.generate(["raw"], params) == [[" world"]]
    (p1, b1), (p2, b2) = script.requests
    assert p1 == "/v1/chat/completions" and b1["messages"][0]["content"] == "hi"
    assert p2 == "/v1/completions" and b2["prompt"] == "raw"
    for body in (b1, b2):
        assert (body["model"], body["n"], body["temperature"], body["max_tokens"],
                body["stop"], body["top_p"], body["seed"]) == ("m", 1, 0.5, 9, ["\n"], 0.9, 4)
    assert (llm.usage.calls, llm.usage.prompt_tokens, llm.usage.completion_tokens) == (2, 9, 4)


def test_server_ignoring_n_is_asked_again():
    script = Script(_chat_response("one"), _chat_response("two"))
    llm = _client(script)
    out = llm.generate([[{"role": "user", "content": "x"}]], SamplingParams(n=2, temperature=1))
    assert out == [["one", "two"]]
    assert [b["n"] for _, b in script.requests] == [2, 1]
    assert script.requests[0][1]["seed"] != script.requests[1][1]["seed"]
    greedy = Script(_chat_response("same"))
    llm = _client(greedy)
    assert llm.generate(["x"], SamplingParams(n=3)) == [["same"] * 3]
    assert len(greedy.requests) == 1


def test_base_url_and_key_from_env(monkeypatch):
    seen = {}

    def handler(request):
        seen["url"], seen["auth"] = str(request.url), request.headers.get("authorization")
        return httpx.Response(200, json=_chat_response())

    monkeypatch.setenv("OPENAI_BASE_URL", "http://envhost:1234/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    llm = OpenAILLM("m", cache=False, transport=httpx.MockTransport(handler))
    llm.generate(["x"])
    assert seen == {"url": "http://envhost:1234/v1/completions", "auth": "Bearer sk-test"}
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAILLM("m", cache=False).base_url == "http://127.0.0.1:8000/v1"


# ----------------------------------------------------------------------------- retries
@pytest.mark.parametrize("failure", [
    httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
    httpx.Response(503, json={"error": {"message": "loading"}}),
    httpx.Response(429, headers={"retry-after": "0"}, json={"error": "busy"}),
    httpx.Response(500, text="boom"),
])
def test_transient_failures_are_retried(failure):
    script = Script(failure, failure, _chat_response("finally"))
    llm = _client(script, max_retries=3)
    assert llm.generate(["x"]) == [["finally"]]
    assert len(script.requests) == 3


def test_client_errors_are_not_retried():
    script = Script(httpx.Response(400, json={"error": {"message": "bad temperature"}}))
    llm = _client(script, max_retries=5)
    with pytest.raises(ServerError, match="HTTP 400.*bad temperature") as info:
        llm.generate(["x"])
    assert info.value.status == 400 and len(script.requests) == 1


def test_unreachable_after_retries_is_a_model_error():
    script = Script(httpx.ConnectError("connection refused"))
    llm = _client(script, max_retries=2)
    with pytest.raises(ModelError, match="unreachable after 3 attempt"):
        llm.generate(["x"])
    assert len(script.requests) == 3
    script = Script(httpx.ReadTimeout("timed out"))
    with pytest.raises(ModelError, match="timed out after 2 attempt"):
        _client(script, max_retries=1).generate(["x"])
    script = Script(httpx.Response(502, text="bad gateway"))
    with pytest.raises(ServerError, match="kept failing after 2 attempt"):
        _client(script, max_retries=1).generate(["x"])


def test_real_closed_port_and_backoff_timing():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = OpenAILLM("m", f"http://127.0.0.1:{port}/v1", cache=False, max_retries=2,
                    backoff=0.05, timeout=2)
    import time

    start = time.monotonic()
    with pytest.raises(ModelError, match="unreachable"):
        llm.generate(["x"])
    # Exponential backoff slept between the 3 attempts (0.05 s, then 0.1 s at least).
    assert time.monotonic() - start >= 0.1


# ----------------------------------------------------------------------------- scoring
def test_letter_scoring_from_top_logprobs():
    top = [(" B", math.log(0.5)), ("B", math.log(0.1)), ("(A", math.log(0.2)),
           ("The", math.log(0.1)), ("x", math.log(0.01))]
    script = Script(_chat_response("B", top=top))
    llm = _client(script, scoring="letter")
    (result,) = llm.score_choices([ITEM])
    body = script.requests[0][1]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    probs = [math.exp(v) for v in result.logprobs]
    assert result.choice == 1 and abs(sum(probs) - 1) < 1e-9
    # B = 0.5 + 0.1 (both spellings), A = 0.2, C unlisted: at most the smallest listed, 0.01.
    assert probs[1] / probs[0] == pytest.approx(3.0) and probs[2] / probs[0] == pytest.approx(0.05)
    assert llm.logprobs_supported is True


def test_completions_letter_scoring_for_base_models():
    response = {"choices": [{"index": 0, "text": " C", "logprobs": {
        "tokens": [" C"], "token_logprobs": [-0.1],
        "top_logprobs": [{" C": -0.1, " A": -2.5, "\n": -3.0}]}}]}
    script = Script(response)
    llm = _client(script, chat=False)
    (result,) = llm.score_choices([ITEM], "letter")
    path, body = script.requests[0]
    assert path == "/v1/completions" and body["prompt"].endswith("Answer:")
    assert body["logprobs"] == 20 and result.choice == 2


def test_no_logprobs_falls_back_to_generation_and_remembers():
    script = Script(_chat_response("(B) blue"))  # the server ignores logprobs
    llm = _client(script, scoring="letter")
    first, second = llm.score_choices([ITEM, ChoiceItem(ITEM.prompt + " ", ITEM.options)])
    assert (first.choice, second.choice) == (1, 1)
    assert first.raw == "(B) blue" and first.logprobs[1] == 0.0
    assert llm.logprobs_supported is False
    # 1 log-prob probe + 2 generations; the second item sent no log-prob request.
    assert [b.get("logprobs") for _, b in script.requests] == [True, None, None]


def test_refused_logprobs_fall_back_and_unparseable_is_invalid():
    script = Script(httpx.Response(400, json={"error": {"message": "logprobs unsupported"}}),
                    _chat_response("I would rather not say"))
    llm = _client(script, scoring="letter")
    (result,) = llm.score_choices([ITEM])
    assert result.choice is None and not result.valid  # recorded as invalid, not raised
    assert llm.logprobs_supported is False


def test_default_scoring_is_generate():
    script = Script(_chat_response("C"))
    llm = _client(script)
    assert llm.default_scoring == "generate"
    assert llm.score_choices([ITEM])[0].choice == 2
    assert "logprobs" not in script.requests[0][1]


def test_cache_hits_skip_the_server(tmp_path):
    script = Script(_chat_response("cached text"))
    llm = _client(script, cache=CallCache(tmp_path / "c"))
    again = _client(script, cache=CallCache(tmp_path / "c"))
    assert llm.generate(["x"]) == again.generate(["x"])
    assert len(script.requests) == 1 and again.usage.cache_hits == 1


def test_count_tokens_estimate():
    llm = _client(Script(_chat_response()))
    assert llm.count_tokens("Hello, world!") == 5  # 2 words * 1.3 -> 3, plus 2 punctuation
    assert llm.count_tokens("") == 1


# ----------------------------------------------------------------------------- own server
class LogprobFake(FakeLLM):
    """FakeLLM with the server's optional next-token log-prob hook."""

    def next_token_logprobs(self, prompt, top_k=20):
        top = [(" B", math.log(0.6)), (" A", math.log(0.25)), (" C", math.log(0.1)),
               ("The", math.log(0.05))]
        return top[:top_k]


@pytest.fixture(scope="module")
def fake_server():
    llms = {"fake-lp": LogprobFake(responder=lambda t, i: f"B) answer {i}"),
            "fake-plain": FakeLLM(responder=lambda t, i: "(C) green")}
    with serve_in_thread(create_openai_app(llms)) as url:
        yield url, llms


def test_server_models_and_errors(fake_server):
    url, _ = fake_server
    assert sorted(OpenAILLM("fake-lp", url, cache=False).list_models()) == ["fake-lp",
                                                                           "fake-plain"]
    r = httpx.post(f"{url}/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "x"}]})
    assert r.status_code == 404 and "not served" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/chat/completions", json={"model": "fake-lp", "n": 0, "messages": [
        {"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"  # OpenAI's status
    r = httpx.post(f"{url}/completions", json={"model": "fake-lp", "prompt": "x", "echo": True})
    assert r.status_code == 400
    with pytest.raises(ServerError, match="not served"):
        OpenAILLM("nope", url, cache=False).generate(["x"])


def test_server_generation_shapes(fake_server):
    url, _ = fake_server
    r = httpx.post(f"{url}/chat/completions", json={
        "model": "fake-lp", "n": 2, "temperature": 0.7, "max_tokens": 5,
        "messages": [{"role": "user", "content": "hello there"}]}).json()
    assert r["object"] == "chat.completion" and len(r["choices"]) == 2
    assert r["choices"][1]["message"] == {"role": "assistant", "content": "B) answer 1"}
    assert r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0
    r = httpx.post(f"{url}/completions", json={"model": "fake-plain", "prompt": ["a", "b"],
                                               "max_tokens": 3}).json()
    assert [c["text"] for c in r["choices"]] == ["(C) green", "(C) green"]
    assert [c["index"] for c in r["choices"]] == [0, 1]


def test_server_logprobs_shapes(fake_server):
    url, _ = fake_server
    r = httpx.post(f"{url}/chat/completions", json={
        "model": "fake-lp", "logprobs": True, "top_logprobs": 2, "max_tokens": 1,
        "messages": [{"role": "user", "content": "q"}]}).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == 1 and [t["token"] for t in content[0]["top_logprobs"]] == [" B", " A"]
    r = httpx.post(f"{url}/completions", json={"model": "fake-lp", "prompt": "q",
                                               "logprobs": 3, "max_tokens": 1}).json()
    lp = r["choices"][0]["logprobs"]
    assert list(lp["top_logprobs"][0]) == [" B", " A", " C"]
    r = httpx.post(f"{url}/chat/completions", json={
        "model": "fake-plain", "logprobs": True, "top_logprobs": 5,
        "messages": [{"role": "user", "content": "q"}]}).json()
    assert r["choices"][0]["logprobs"] is None  # no hook: no log-probs, clients fall back


def test_client_against_own_server(fake_server):
    url, llms = fake_server
    assert isinstance(llms["fake-lp"], NextTokenLogprobs)
    assert not isinstance(llms["fake-plain"], NextTokenLogprobs)
    with_lp = OpenAILLM("fake-lp", url, cache=False, scoring="letter")
    (result,) = with_lp.score_choices([ITEM])
    assert result.choice == 1 and with_lp.logprobs_supported
    assert [math.exp(v) for v in result.logprobs] == pytest.approx([0.25 / 0.95, 0.6 / 0.95,
                                                                    0.1 / 0.95])
    plain = OpenAILLM("fake-plain", url, cache=False, scoring="letter")
    (result,) = plain.score_choices([ITEM])
    assert result.choice == 2 and plain.logprobs_supported is False


# ----------------------------------------------------------------------------- real model
EASY = [
    ChoiceItem("Question: What color is the sky on a clear day?\n(A) Green\n(B) Blue\n"
               "(C) Red\nAnswer:", ("Green", "Blue", "Red")),
    ChoiceItem("Question: How many legs does a dog have?\n(A) Four\n(B) Two\n(C) Ten\nAnswer:",
               ("Four", "Two", "Ten")),
]


def _letter_probs(top: list[tuple[str, float]], item: ChoiceItem) -> list[float]:
    """The item's letters' share of the next-token probability (" B" and "B" summed), from the
    model's own top tokens; a letter not among them counts as the least likely listed token
    (the client's documented floor)."""
    floor = min(math.exp(v) for _, v in top)
    letters = {x: sum(math.exp(v) for t, v in top if t.strip().lstrip("(") == x) or floor
               for x in item.letters}
    total = sum(letters.values())
    return [letters[x] / total for x in item.letters]


@pytest.fixture(scope="module")
def real_server():
    from personalign.runtime.llm.transformers_backend import TransformersLLM

    llm = TransformersLLM("smollm2-135m-instruct", cache=False)
    with serve_in_thread(create_openai_app({"smollm2": llm})) as url:
        yield url, llm


@pytest.mark.real_model
def test_real_server_generates_and_scores(real_server, tmp_path):
    url, served = real_server
    llm = OpenAILLM("smollm2", url, timeout=120, scoring="letter",
                    cache=CallCache(tmp_path / "c"))
    params = SamplingParams(max_tokens=8)
    messages = [{"role": "user", "content": "Name one fruit that is yellow."}]
    (texts,) = llm.generate([messages], params)
    assert len(texts) == 1 and sum(ch.isalpha() for ch in texts[0]) >= 3
    assert llm.usage.prompt_tokens > 0 and llm.usage.completion_tokens > 0

    results = llm.score_choices(EASY)
    assert llm.logprobs_supported is True
    # Over HTTP the letters' probabilities are those of the served model's next token, read
    # here from the model in-process (every letter among its top 20, both spellings summed).
    for item, res in zip(EASY, results):
        want = _letter_probs(served.next_token_logprobs(llm.choice_prompt(item), 20), item)
        assert [math.exp(v) for v in res.logprobs] == pytest.approx(want, rel=1e-3)

    # The cache answers repeats without calling the server again.
    calls_before = served.usage.calls
    assert llm.generate([messages], params) == [texts]
    assert [r.choice for r in llm.score_choices(EASY)] == [r.choice for r in results]
    assert llm.usage.cache_hits == 1 + len(EASY)
    assert served.usage.calls == calls_before


@pytest.mark.real_model
def test_real_server_raw_completion(real_server):
    url, served = real_server
    llm = OpenAILLM("smollm2", url, timeout=120, cache=False, chat=False)
    (texts,) = llm.generate(["The capital of France is"], SamplingParams(max_tokens=4))
    assert "Paris" in texts[0]
    (res,) = llm.score_choices(EASY[:1], "letter")  # raw text ending in "Answer:"
    assert llm.logprobs_supported
    prompt = EASY[0].prefix + EASY[0].prompt
    want = _letter_probs(served.next_token_logprobs(prompt, 20), EASY[0])
    assert [math.exp(v) for v in res.logprobs] == pytest.approx(want, rel=1e-3)


def test_server_usage_is_the_same_on_a_cache_hit(tmp_path):
    """The same request twice: the second is a cache hit and reports the first's tokens
    (which include the chat template's, as a real backend's do)."""
    class Templated(FakeLLM):
        def _generate(self, prompts, params):
            out = super()._generate(prompts, params)
            for gen in out:
                gen.prompt_tokens += 30  # the template around the messages
            return out

    llm = Templated(responder=lambda t, i: "a reply of a few words", cache=CallCache(tmp_path))
    body = {"model": "m", "max_tokens": 16, "messages": [
        {"role": "system", "content": "Be kind. " * 20}, {"role": "user", "content": "Hi"}]}
    with serve_in_thread(create_openai_app({"m": llm})) as url:
        first, second = (httpx.post(f"{url}/chat/completions", json=body).json()["usage"]
                         for _ in range(2))
    assert llm.usage.cache_hits == 1
    assert first == second and first["prompt_tokens"] > 20
