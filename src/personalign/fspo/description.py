"""FSPO's user-description step at inference: the one rule the ``fspo`` method and ``fspo eval``
share.

A description-first prompt (the user-description variant's task line: ``serialize_prompt(...,
"user-description")``, or :func:`~personalign.fspo.data.serialization.describe_first` of an
episode) asks the model to describe the user, then answer. The answer is read after
"## User Description\\n{d}\\n": ``d`` is the user's true description where the caller gives one
(a model trained on the variant, asked where the protocol knows the user's profile), else the
one the model writes (FSPO's predicted description, "RAT"): greedy, at most
``DESCRIPTION_TOKENS`` tokens, up to the next section header.
"""

from __future__ import annotations

from typing import Sequence

from personalign.runtime.llm.base import LLM
from personalign.runtime.llm.types import SamplingParams

DESCRIPTION_HEADER = "## User Description\n"
#: the most tokens a written description takes (the project's CPU models ramble past this)
DESCRIPTION_TOKENS = 64
WRITE = SamplingParams(max_tokens=DESCRIPTION_TOKENS, stop=("\n#",))


def with_description(prompt: str, description: str) -> str:
    """The prefix the preferred response follows: ``prompt`` and the description section."""
    return f"{prompt}{DESCRIPTION_HEADER}{description.strip()}\n"


def descriptions_for(llm: LLM, prompts: Sequence[str], phase: str,
                     given: Sequence[str | None] | None = None) -> list[str]:
    """Per description-first prompt: its ``given`` description, or (None, empty or no
    ``given``) the one ``llm`` writes, in one generation call counted to ``phase``."""
    out = [(g or "").strip() for g in (given or [None] * len(prompts))]
    todo = [i for i, g in enumerate(out) if not g]
    if todo:
        with llm.phase(phase):
            texts = llm.generate([prompts[i] + DESCRIPTION_HEADER for i in todo], WRITE)
        for i, t in zip(todo, texts):
            out[i] = t[0].strip()
    return out
