"""What a method's LLM use will cost, projected before a run (``Personalizer.project``).

Tokens are estimated at 4 characters a token, the estimate ``LLM.count_tokens`` makes without
a tokenizer; a projection is an expected upper bound of calls without retries or cache hits,
not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from personalign.runtime.data.records import Opinion
from personalign.runtime.prompts import TASK_INSTRUCTION, answered_block, choice_item

CHARS_PER_TOKEN = 4
PROMPT_TOKENS = 60              # a written prompt (Fermi, OPRO, the profile prompt)


@dataclass(frozen=True)
class Cost:
    """LLM calls and tokens (prompt and completion) of one phase of one user."""

    calls: int = 0
    tokens: int = 0


def item_tokens(questions: Sequence[Opinion]) -> int:
    """Tokens of the questions asked with the task instruction."""
    return sum(len(choice_item(TASK_INSTRUCTION, q).prompt) + len(TASK_INSTRUCTION)
               for q in questions) // CHARS_PER_TOKEN


def shots_tokens(shots: Sequence[Opinion], k: int) -> int:
    """Tokens of k past opinions shown before a question (the user's average opinion)."""
    return k * sum(len(answered_block(o)) for o in shots) // CHARS_PER_TOKEN \
        // max(1, len(shots))


def scored_questions(phase: str, test: Sequence[Opinion], extra_per_question: int = 0
                     ) -> dict[str, Cost]:
    """One scoring call per test question, each with ``extra_per_question`` more tokens (a
    written prompt, past opinions shown)."""
    return {phase: Cost(len(test), item_tokens(test) + extra_per_question * len(test))}
