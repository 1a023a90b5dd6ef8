"""``LLM.stream`` on the real backends: the pieces come one token at a time and join to the
very text ``generate_one`` gives for the same request (greedy and seeded sampling), with the
same token counts; a stop string is never sent, not even its first characters."""

from __future__ import annotations

import pytest

from personalign.runtime.llm.base import Generation
from personalign.runtime.llm.types import SamplingParams

pytestmark = pytest.mark.real_model

CHAT = [{"role": "user", "content": "Name three colours of the rainbow, then explain why."}]


@pytest.fixture(scope="module")
def llamacpp_smollm():
    pytest.importorskip("llama_cpp")
    from personalign.runtime.llm.llamacpp_backend import LlamaCppLLM

    return LlamaCppLLM("smollm2-135m-instruct", cache=False, n_ctx=512)


@pytest.fixture(params=["engine", "llamacpp"])
def llm(request, smollm):
    return smollm if request.param == "engine" else request.getfixturevalue("llamacpp_smollm")


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=24),
                                    SamplingParams(max_tokens=24, temperature=0.8, seed=3)],
                         ids=["greedy", "sampled"])
def test_pieces_join_to_the_generated_text(llm, params):
    usage = Generation([])
    pieces = list(llm.stream(CHAT, params, usage))
    texts, prompt_tokens, completion_tokens = llm.generate_one(CHAT, params)
    assert "".join(pieces) == texts[0] == usage.texts[0]
    assert len(pieces) >= 10  # token-sized pieces, not one finished text
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, completion_tokens)


def test_a_stop_string_is_never_sent(smollm):
    params = SamplingParams(max_tokens=40)
    full = smollm.generate_one(CHAT, params)[0][0]
    stop = full[len(full) // 2: len(full) // 2 + 4]  # four characters from the middle
    assert len(stop) == 4
    pieces = list(smollm.stream(CHAT, SamplingParams(max_tokens=40, stop=(stop,))))
    expected = full[:full.find(stop)]
    assert "".join(pieces) == expected
