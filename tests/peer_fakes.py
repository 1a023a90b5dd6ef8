"""Scripted LLMs that answer DSPy's requests as a model would through the loopback endpoint:
the task model writes DSPy's chat format (or, for some questions, no format at all), the
optimizer writes the JSON GEPA's proposer asks for or the chat fields MIPROv2's proposer asks
for. No real data, no model weights."""

from __future__ import annotations

import json
import re

from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import BagEmbedder

#: what the task model writes for a question whose number is GARBLED (no DSPy format)
GARBLE = "I would rather not pick one of these."
#: the instruction word that makes the fake task model answer well (as the user did)
GOOD_WORD = "careful"


def output_fields(text: str) -> list[str]:
    """The output fields a DSPy request lists ("Your output fields are: 1. `answer` ...")."""
    m = re.search(r"Your output fields are:\n(.*?)(?:\n\n|All interactions|$)", text, re.S)
    return re.findall(r"`(\w+)`", m.group(1)) if m else []


def last_question_number(text: str) -> int | None:
    """The number of the question being asked (the last one in the request)."""
    found = re.findall(r"number (\d+)", text)
    return int(found[-1]) if found else None


def garbled(number: int | None) -> bool:
    return number is not None and number % 5 == 4


def task_responder(text: str, i: int) -> str:
    """Answers the question of a DSPy chat request: with the instruction word, the user's own
    answer (``make_user``: number mod 3), else always A; questions numbered 4 mod 5 get a reply
    in no DSPy format. Other requests (a proposer run on the task model) get every field."""
    fields = output_fields(text)
    if fields == ["answer"]:
        n = last_question_number(text)
        if garbled(n):
            return GARBLE
        instruction = text.split("In adhering to this structure, your objective is:")[-1]
        letter = "ABC"[(n or 0) % 3] if GOOD_WORD in instruction.split("[[ ##")[0] else "A"
        return f"[[ ## answer ## ]]\n{letter}\n\n[[ ## completed ## ]]"
    return "".join(f"[[ ## {f} ## ]]\nSome {f}.\n\n" for f in fields) + "[[ ## completed ## ]]"


def optimizer_responder(text: str, i: int) -> str:
    """Proposes an instruction with the good word: as JSON when asked for JSON (GEPA's
    proposer), else in DSPy's chat fields (MIPROv2's proposer and summaries)."""
    fields = output_fields(text)
    value = f"Answer as this {GOOD_WORD} person would."
    if "JSON" in text:
        return json.dumps({f: value for f in fields})
    return "".join(f"[[ ## {f} ## ]]\n{value}\n\n" for f in fields) + "[[ ## completed ## ]]"


def chat_task_llm(model_id: str = "fake-chat-task", cache=None) -> FakeLLM:
    return FakeLLM(responder=task_responder, model_id=model_id, cache=cache)


def chat_optimizer_llm(cache=None) -> FakeLLM:
    return FakeLLM(responder=optimizer_responder, model_id="fake-chat-opt", cache=cache)


def peer_models(task_id: str = "fake-chat-task", cache=None) -> SharedModels:
    """The fakes as a run's models; ``cache``: their call cache (None: none)."""
    return SharedModels.of(chat_task_llm(task_id, cache), chat_optimizer_llm(cache),
                           BagEmbedder())
