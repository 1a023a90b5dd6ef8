"""Questions whose answer is not in doubt, for the real backends, and how two backends' numbers
are compared.

``KNOWN``: the gold option sits at A, B and C in turn, so neither a letter bias nor an
off-by-one letter (or token) id can pass. ``LIKELY``: a context, its true continuation and a
false one.

Agreement of two backends on one model (bfloat16 or float32 weights against a Q4_K_M or Q8
GGUF, different kernels): each option's log-prob within ``0.15 + 0.15 * |log-prob|`` nats.
Measured on Qwen2.5-Coder 1.5B Instruct (engine bfloat16 vs llama.cpp Q4_K_M), the largest
differences were 0.10 nats (letters), 0.44 at -3.5 and 0.50 at -6.8 (option texts) and 0.11 at
-8.5 (log-likelihoods); on SmolLM2 (float32 vs its GGUF) 0.17 at -4.
"""

from __future__ import annotations

from collections.abc import Sequence

from personalign.runtime.llm.types import ChoiceItem, ChoiceResult

KNOWN: list[tuple[str, tuple[str, ...], int]] = [
    ("What is 2 + 2?", ("3", "4", "5"), 1),
    ("What is the capital of France?", ("Berlin", "Madrid", "Paris"), 2),
    ("What color is grass?", ("Green", "Blue", "Red"), 0),
    ("What is frozen water called?", ("Steam", "Ice", "Sand"), 1),
    ("How many days are in a week?", ("Five", "Ten", "Seven"), 2),
]
GOLD = [gold for _, _, gold in KNOWN]

LIKELY: list[tuple[str, str, str]] = [
    ("The capital of France is", " Paris", " Berlin"),
    ("2 + 2 =", " 4", " 5"),
    ("The opposite of hot is", " cold", " warm"),
    ("Monday, Tuesday,", " Wednesday", " Friday"),
]
MARGIN = 2.0  # nats by which the true continuation must beat the false one


def letter_items() -> list[ChoiceItem]:
    """The questions with lettered options, answered by a letter."""
    return [ChoiceItem(prefix="Choose the correct answer.\n\n", options=options,
                       prompt=f"Question: {q}\nAnswer choices: "
                       + " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(options))
                       + "\nAnswer:") for q, options, _ in KNOWN]


def text_items() -> list[ChoiceItem]:
    """The questions without options listed, answered by an option's text."""
    return [ChoiceItem(prefix="Answer with the correct option only.\n\n",
                       prompt=f"Question: {q}\nAnswer:", options=options)
            for q, options, _ in KNOWN]


def wrong_answers(results: Sequence[ChoiceResult]) -> list[str]:
    """The known questions a backend got wrong, with what it chose."""
    return [f"{q!r}: chose {r.choice} ({options[r.choice] if r.choice is not None else None}),"
            f" not {gold} ({options[gold]})"
            for (q, options, gold), r in zip(KNOWN, results) if r.choice != gold]


def tolerance(a: float, b: float) -> float:
    return 0.15 + 0.15 * max(abs(a), abs(b))


def disagreements(got: Sequence[float], want: Sequence[float]) -> list[str]:
    """Pairs of log-probs further apart than :func:`tolerance`."""
    assert len(got) == len(want)
    return [f"{a:.4f} vs {b:.4f} (|diff| {abs(a - b):.3f} > {tolerance(a, b):.3f})"
            for a, b in zip(got, want) if not abs(a - b) <= tolerance(a, b)]  # NaN: flagged
