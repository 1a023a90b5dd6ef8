"""The OpenAI-compatible backend against a server we did not write: llama.cpp's own
(``python -m llama_cpp.server``) on a loopback port, serving the embedded SmolLM2 GGUF.

Chat, letter scoring from log-probs where the server offers them, generate-and-parse where
it is asked to (or offers none). Needs the ``llamacpp`` extra (CI: ``.ci/llamacpp.sh``).
"""

from __future__ import annotations

import importlib.util
import math
import socket
import subprocess
import sys
import time

import httpx
import pytest

from personalign.runtime.llm.openai_backend import OpenAILLM
from personalign.runtime.llm.types import ChoiceItem, SamplingParams

HAS_SERVER = all(importlib.util.find_spec(m) is not None
                 for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette"))
pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not HAS_SERVER, reason="llama-cpp-python[server] (extra "
                                 "'llamacpp') not installed")]

EASY = [
    ChoiceItem("Question: What color is the sky on a clear day?\n(A) Green\n(B) Blue\n"
               "(C) Red\nAnswer:", ("Green", "Blue", "Red")),
    ChoiceItem("Question: How many legs does a dog have?\n(A) Four\n(B) Two\n(C) Ten\nAnswer:",
               ("Four", "Two", "Ten")),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _offers_logprobs() -> bool:
    """Whether this llama_cpp.server version takes ``logits_all`` (log-probs need it)."""
    from llama_cpp.server.settings import ModelSettings

    return "logits_all" in ModelSettings.model_fields


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    from personalign.runtime.llm.llamacpp_backend import resolve_gguf

    port = _free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model",
            str(resolve_gguf("smollm2-135m-instruct")), "--model_alias", "smollm2",
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1"]
    logprobs = _offers_logprobs()
    if logprobs:
        args += ["--logits_all", "True"]
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, logprobs
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_chat_against_llama_cpp_server(llama_server):
    url, _ = llama_server
    llm = OpenAILLM("smollm2", url, timeout=120, cache=False)
    messages = [{"role": "user", "content": "Name one fruit that is yellow."}]
    (texts,) = llm.generate([messages], SamplingParams(max_tokens=8))
    assert sum(ch.isalpha() for ch in texts[0]) >= 3
    assert llm.usage.prompt_tokens > 0 and llm.usage.completion_tokens > 0


def _letter_probs(top: list[dict], letters) -> list[float]:
    """The letters' share of the next-token probability in a chat completion's top log-probs
    (" B" and "B" summed; a letter not listed counts as the least likely listed token)."""
    floor = min(math.exp(t["logprob"]) for t in top)
    probs = {x: sum(math.exp(t["logprob"]) for t in top
                    if t["token"].strip().lstrip("(") == x) or floor for x in letters}
    total = sum(probs.values())
    return [probs[x] / total for x in letters]


def test_letter_scoring_from_llama_cpp_logprobs(llama_server):
    """Over HTTP, the letters' probabilities are those the library gives in-process for the
    same chat request on the same GGUF."""
    url, offered = llama_server
    llm = OpenAILLM("smollm2", url, timeout=120, cache=False, scoring="letter")
    results = llm.score_choices(EASY)
    # log-probs where the server offers them; otherwise the client falls back to generation
    assert llm.logprobs_supported is offered
    if not offered:
        return
    from llama_cpp import Llama

    from personalign.runtime.llm.llamacpp_backend import resolve_gguf

    local = Llama(model_path=str(resolve_gguf("smollm2-135m-instruct")), n_ctx=1024,
                  n_threads=1, logits_all=True, verbose=False)
    for item, res in zip(EASY, results):
        reply = local.create_chat_completion(messages=llm.choice_prompt(item), max_tokens=1,
                                             temperature=0.0, logprobs=True, top_logprobs=20)
        top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        want = _letter_probs(top, item.letters)
        assert [math.exp(v) for v in res.logprobs] == pytest.approx(want, abs=0.01), top


def test_generate_and_parse_against_llama_cpp_server(llama_server):
    url, _ = llama_server
    llm = OpenAILLM("smollm2", url, timeout=120, cache=False, scoring="generate")
    results = llm.score_choices(EASY)
    assert llm.usage.completion_tokens > 0  # answered by writing, not by log-probs
    assert all(res.raw for res in results)
    # SmolLM2-135M writes "A dog has four legs.": parsed as (A) Four. (Its sky answer,
    # "A: Red", is no known answer: the letter and the text disagree.)
    legs = results[1]
    assert "four" in legs.raw.lower() and legs.choice == 0, legs


def test_raw_completion_against_llama_cpp_server(llama_server):
    url, _ = llama_server
    llm = OpenAILLM("smollm2", url, timeout=120, cache=False, chat=False)
    (texts,) = llm.generate(["The capital of France is"], SamplingParams(max_tokens=4))
    assert "Paris" in texts[0], texts
