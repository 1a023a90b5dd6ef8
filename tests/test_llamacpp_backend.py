"""llama.cpp backend: a clear install hint without the extra; the backend's own logic against a
stand-in ``llama_cpp`` module; the real library on the embedded GGUF when it is installed."""

from __future__ import annotations

import ctypes
import importlib.util
import math
import sys
import types

import numpy as np
import pytest

from personalign.runtime.errors import ModelError
from personalign.runtime.llm.types import ChoiceItem, SamplingParams

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
ITEM = ChoiceItem("Question: Pick one.\n(A) red\n(B) blue\nAnswer:", ("red", "blue"))


class StandInLlama:
    """The slice of ``llama_cpp.Llama`` the backend uses: bytes tokenize, eval/scores/reset,
    create_completion and create_chat_completion. Next-token logits favour token 12 (" B")."""

    VOCAB = 16

    def __init__(self, model_path, n_ctx, n_threads, verbose, logits_all=False, **kw):
        self.model_path, self.kw = model_path, kw
        self.n_tokens = 0
        self._logits_all = logits_all
        self.scores = np.zeros((n_ctx, self.VOCAB), dtype=np.float32)
        self.calls: list = []
        self._last = np.zeros(self.VOCAB, dtype=np.float32)
        # Like llama-cpp-python >=0.3 without logits_all: the last row via the context only.
        self._ctx = types.SimpleNamespace(get_logits=lambda: self._last.ctypes.data_as(
            ctypes.POINTER(ctypes.c_float)))

    def n_vocab(self):
        return self.VOCAB

    def tokenize(self, text: bytes, add_bos: bool = True):
        ids = [1] if add_bos else []
        for word in text.decode().split(" "):
            if word:
                ids.append({"A": 11, "B": 12}.get(word, 2 + len(word) % 8))
        return ids

    def reset(self):
        self.n_tokens = 0

    def eval(self, tokens):
        for tok in tokens:
            row = np.full(self.VOCAB, -5.0, dtype=np.float32)
            row[12], row[11] = 2.0, 1.0  # after anything: " B" likelier than " A"
            row[(tok + 1) % self.VOCAB] = 3.0  # and the "next" id likelier still
            if self._logits_all:
                self.scores[self.n_tokens] = row
            self._last[:] = row
            self.n_tokens += 1

    def create_completion(self, prompt, **kw):
        self.calls.append(("completion", prompt, kw))
        return {"choices": [{"text": f" done {kw['seed']}"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2}}

    def create_chat_completion(self, messages, **kw):
        self.calls.append(("chat", messages, kw))
        return {"choices": [{"message": {"content": "hi"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1}}


@pytest.fixture(params=[False, True], ids=["last-logits", "logits-all"])
def stand_in(monkeypatch, tmp_path, request):
    module = types.ModuleType("llama_cpp")
    module.Llama = StandInLlama
    monkeypatch.setitem(sys.modules, "llama_cpp", module)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    from personalign.runtime.llm.llamacpp_backend import LlamaCppLLM

    return LlamaCppLLM(str(gguf), cache=False, seed=7, logits_all=request.param)


def test_install_hint_without_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails like a missing package
    from personalign.runtime.llm.llamacpp_backend import LlamaCppLLM

    with pytest.raises(ModelError, match=r"pip install 'personalign\[llamacpp\]'"):
        LlamaCppLLM("smollm2-135m-instruct")


def test_bad_model_names(stand_in, tmp_path):
    from personalign.runtime.llm.llamacpp_backend import LlamaCppLLM

    with pytest.raises(ModelError, match="not found"):
        LlamaCppLLM(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="expected a .gguf path"):
        LlamaCppLLM("all-minilm-l6-v2")


def test_generate_routes_and_counts(stand_in):
    llm = stand_in
    assert llm.llama.kw == {"seed": 7}
    out = llm.generate(["raw", [{"role": "user", "content": "x"}]],
                       SamplingParams(n=2, temperature=0.8, seed=3, stop=("\n",)))
    assert out == [[" done 3", " done 4"], ["hi", "hi"]]
    kinds = [c[0] for c in llm.llama.calls]
    assert kinds == ["completion", "completion", "chat", "chat"]
    assert llm.llama.calls[0][2]["stop"] == ["\n"]
    assert (llm.usage.prompt_tokens, llm.usage.completion_tokens) == (16, 6)
    llm.llama.calls.clear()
    assert llm.generate(["greedy"], SamplingParams(n=3)) == [[" done 0"] * 3]
    assert len(llm.llama.calls) == 1


def test_letter_and_text_scoring(stand_in):
    (letter,) = stand_in.score_choices([ITEM], "letter")
    assert letter.choice == 1  # " B" beats " A"
    assert [math.exp(v) for v in letter.logprobs] == pytest.approx(
        [1 / (1 + math.e), math.e / (1 + math.e)])
    (text,) = stand_in.score_choices([ITEM], "text")
    assert len(text.logprobs) == 2 and text.valid
    (ll,) = stand_in.loglikelihood([("some context", " B")])
    assert ll < 0


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python (extra 'llamacpp') not installed")
def test_real_llama_cpp_on_embedded_gguf():
    from personalign.runtime.llm.llamacpp_backend import LlamaCppLLM

    llm = LlamaCppLLM("smollm2-135m-instruct", cache=False, n_ctx=512)
    (texts,) = llm.generate([[{"role": "user", "content": "Name a yellow fruit."}]],
                            SamplingParams(max_tokens=8))
    assert texts[0].strip()
    (res,) = llm.score_choices([ITEM], "letter")
    assert res.valid and sum(math.exp(v) for v in res.logprobs) == pytest.approx(1.0)
    # ignore_eos: every sample runs to max_tokens (a "Hi" reply would otherwise end early).
    gen = llm._generate([[{"role": "user", "content": "Hi"}]],
                        SamplingParams(n=2, temperature=1.0, max_tokens=40, ignore_eos=True))
    assert gen[0].completion_tokens == 80
