"""The exact FSPO episode serialization (raw text, no chat template) and its variants.

Layout of a prompt with N shots (``variant="default"``)::

    # Example 1
    ## Question
    {x1}
    ## Preferred Response
    {y_w1}
    ## Dispreferred Response
    {y_l1}

    # Example 2
    ...

    # Task
    Given the examples above, generate a preferred response to the following question.
    ## Question
    {x}

chosen = "## Preferred Response\\n{y_w}\\n", rejected = "## Preferred Response\\n{y_l}\\n".

EOS is NOT part of the completion strings: the trainer (TRL's DPO/SFT data collators, i.e. the
tokenizer) appends the tokenizer's EOS token, so the same records work for any model family.

Variants (the task line follows the authors' ``shots_to_text``):

- ``default``: shots with preferred and dispreferred responses.
- ``preferred-only``: shots show only "## Response\\n{y_w}"; the task asks for "a response" and
  completions use the "## Response" header.
- ``user-description``: FSPO's chain of thought. The model first writes the user description,
  then the response: completion = "## User Description\\n{d}\\n## Preferred Response\\n{y}\\n";
  the chosen side carries the user's true description, the rejected side the description of a
  user who prefers y_l (the user's own description when unknown).
- ``oracle``: the true description is given in the prompt, before the examples
  ("# User Description\\n{d}\\n\\n"), completions as in ``default``.

Zero shots (any variant): "# Task\\nGenerate a response to the following question.\\n..."
(for ``user-description`` with zero shots the task line asks for the description first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from personalign.runtime.errors import ConfigError, DataError

VARIANTS = ("default", "preferred-only", "user-description", "oracle")

TASK_PREFERRED = "Given the examples above, generate a preferred response to the following question."
TASK_RESPONSE = "Given the examples above, generate a response to the following question."
TASK_ZERO = "Generate a response to the following question."
TASK_DESCRIPTION = ("Generate a user description based on the examples above. Then, generate a "
                    "preferred response to the following question.")
TASK_DESCRIPTION_ZERO = ("Generate a user description. Then, generate a preferred response to "
                         "the following question.")


@dataclass(frozen=True)
class Shot:
    """One labeled example shown in context."""

    question: str
    preferred: str
    dispreferred: str


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown episode variant {variant!r}; known: {', '.join(VARIANTS)}")
    return variant


def format_shot(index: int, shot: Shot, include_dispreferred: bool = True) -> str:
    """One example block (``index`` is 1-based), ending with a newline."""
    text = f"# Example {index}\n## Question\n{shot.question}\n"
    if include_dispreferred:
        text += (f"## Preferred Response\n{shot.preferred}\n"
                 f"## Dispreferred Response\n{shot.dispreferred}\n")
    else:
        text += f"## Response\n{shot.preferred}\n"
    return text


def task_line(variant: str, n_shots: int) -> str:
    check_variant(variant)
    if variant == "user-description":
        return TASK_DESCRIPTION if n_shots else TASK_DESCRIPTION_ZERO
    if n_shots == 0:
        return TASK_ZERO
    return TASK_RESPONSE if variant == "preferred-only" else TASK_PREFERRED


def serialize_prompt(shots: Sequence[Shot], question: str, variant: str = "default",
                     user_description: str | None = None) -> str:
    """The episode prompt: shots separated by blank lines, then the task and the question."""
    check_variant(variant)
    blocks = [format_shot(i + 1, s, include_dispreferred=variant != "preferred-only")
              for i, s in enumerate(shots)]
    blocks.append(f"# Task\n{task_line(variant, len(shots))}\n## Question\n{question}\n")
    text = "\n".join(blocks)
    if variant == "oracle":
        if not user_description:
            raise ConfigError("the oracle variant needs the user's description")
        text = f"# User Description\n{user_description}\n\n" + text
    return text


def describe_first(prompt: str) -> str:
    """An episode prompt with the user-description variant's task line (the model is asked
    to describe the user, then answer): ``serialize_prompt``'s user-description prompt of the
    same shots and question."""
    at = prompt.rfind("# Task\n")
    if at < 0:
        raise DataError("episode prompt has no '# Task' section", field="prompt")
    start = at + len("# Task\n")
    end = prompt.find("\n", start) % (len(prompt) + 1)  # no newline: to the end
    shots = "# Example " in prompt[:at]
    return prompt[:start] + task_line("user-description", int(shots)) + prompt[end:]


def response_header(variant: str) -> str:
    return "## Response" if variant == "preferred-only" else "## Preferred Response"


def serialize_completions(chosen: str, rejected: str, variant: str = "default",
                          user_description: str | None = None,
                          rejected_description: str | None = None) -> tuple[str, str]:
    """(chosen, rejected) completions; no EOS (the trainer's tokenizer appends it)."""
    header = response_header(check_variant(variant))
    chosen_text = f"{header}\n{chosen}\n"
    rejected_text = f"{header}\n{rejected}\n"
    if variant == "user-description":
        if not user_description:
            raise ConfigError("the user-description variant needs the user's description")
        if not rejected_description or rejected_description == user_description:
            # the user's own description on both sides would teach nothing about who prefers
            # what: the caller skips the variant instead (fspo-data says so)
            raise ConfigError("the user-description variant needs a different description "
                              "on the rejected side")
        other = rejected_description
        chosen_text = f"## User Description\n{user_description}\n" + chosen_text
        rejected_text = f"## User Description\n{other}\n" + rejected_text
    return chosen_text, rejected_text
