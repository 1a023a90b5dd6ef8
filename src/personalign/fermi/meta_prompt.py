"""The optimizer's meta-prompt (OPRO-style, with Fermi's mis-aligned responses).

Layout (spec "Optimizer meta-prompt"): task framing with the profile, the scoring rule, the
memory in ascending score order (failure cases in full for the reference entry; for the
others only the indices shared with the reference and a count of newly mis-aligned ones),
demonstrations with <INS>, and the closing request for a new text in square brackets.

``build_continuation_prompt`` is the list form OPRO gives a base (non-chat) optimizer: the
memory as "text:/score:" lines and an open "text:" line for the model to continue.
"""

from __future__ import annotations

from typing import Sequence

from personalign.fermi.memory import Candidate
from personalign.runtime.data.records import Opinion
from personalign.runtime.prompts import answer_text, question_block


def _score_text(score: float) -> str:
    return str(round(100 * score))


def _failure_cases_full(entry: Candidate, questions: Sequence[Opinion], cap: int) -> str:
    if not entry.misaligned:
        return "failure cases: none"
    lines = ["failure cases:"]
    shown = entry.misaligned[:cap]
    for i in shown:
        q = questions[i]
        pred = entry.predictions[i] if i < len(entry.predictions) else None
        lines.append(f"({i + 1}) Question: {q.question}")
        lines.append(f"    The person's answer: {answer_text(q.options, q.answer)}")
        lines.append(f"    The model's answer: {answer_text(q.options, pred)}")
    if len(entry.misaligned) > len(shown):
        lines.append(f"... and {len(entry.misaligned) - len(shown)} more mis-aligned examples")
    return "\n".join(lines)


def _failure_cases_relative(entry: Candidate, reference: Candidate) -> str:
    ref = set(reference.misaligned)
    shared = [i + 1 for i in entry.misaligned if i in ref]
    new = sum(1 for i in entry.misaligned if i not in ref)
    return f"failure cases: {shared} and {new} additional newly mis-aligned examples"


def build_meta_prompt(*, profile: str, questions: Sequence[Opinion],
                      demonstrations: Sequence[Opinion], entries: Sequence[Candidate],
                      reference: Candidate | None, mode: str = "fermi",
                      failure_case_cap: int = 8) -> str:
    """The full meta-prompt text. ``entries`` must already be in ascending score order;
    ``reference`` is the entry whose failure cases are listed in full (ignored for OPRO)."""
    parts = []
    framing = ("Your task is to write a text that makes a language model answer survey "
               "questions the way a specific person would.")
    if profile:
        framing += f" The person can be described as follows: {profile}."
    parts.append(framing)
    parts.append(
        f"For each of {len(questions)} questions we know the person's answer and the model's "
        "answer when the text is placed before the question. The score of a text is the "
        "percentage of questions where the model's answer matches the person's answer; a "
        "higher score is better.")
    if mode == "fermi":
        parts.append("Below are previous texts with their scores and failure cases (questions "
                     "the model answered differently from the person), in ascending order of "
                     "score.")
    else:
        parts.append("Below are previous texts with their scores, in ascending order of score.")
    for entry in entries:
        block = [f"text: {entry.prompt}", f"score: {_score_text(entry.score)}"]
        if mode == "fermi":
            if reference is None or entry is reference:
                block.append(_failure_cases_full(entry, questions, failure_case_cap))
            else:
                block.append(_failure_cases_relative(entry, reference))
        parts.append("\n".join(block))
    if demonstrations:
        demo_lines = ["Below are examples of how the text is used, where <INS> stands for the "
                      "text, with the person's answers:"]
        for q in demonstrations:
            block = question_block(q.question, q.options)
            demo_lines.append(f"<INS>\n{block} {answer_text(q.options, q.answer)}")
        parts.append("\n\n".join(demo_lines))
    parts.append("Write a new text that is different from the old ones and has a score as high "
                 "as possible. Write the text in square brackets.")
    return "\n\n".join(parts)


def build_continuation_prompt(*, profile: str, questions: Sequence[Opinion],
                              entries: Sequence[Candidate], reference: Candidate | None,
                              mode: str = "fermi", failure_case_cap: int = 8) -> str:
    """The memory as a scored list that a base model continues with one new "text:" line.
    Fermi mode first lists the person's answers that the reference entry still misses."""
    header = ("The texts below make a language model answer survey questions the way one "
              "person would.")
    if profile:
        header += f" The person: {profile}."
    header += (" Each text has a score: the percentage of the person's answers it reproduces. "
               "Texts are listed from lowest to highest score.")
    parts = [header]
    if mode == "fermi" and reference is not None and reference.misaligned:
        lines = ["The person's answers that the best text still misses:"]
        for i in reference.misaligned[:failure_case_cap]:
            q = questions[i]
            lines.append(f"- {q.question} The person's answer: {answer_text(q.options, q.answer)}")
        parts.append("\n".join(lines))
    for entry in entries:
        parts.append(f"text: {entry.prompt}\nscore: {_score_text(entry.score)}")
    parts.append("text:")
    return "\n\n".join(parts)
