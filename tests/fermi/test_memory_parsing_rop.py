"""Memory order, lenient bracket parsing, RoP selection, per-task scores."""

import numpy as np
import pytest

from personalign.fermi.memory import Candidate, Memory
from personalign.fermi.parsing import parse_continuation, parse_prompt
from personalign.fermi.rop import best_prompt, select_prompts
from personalign.fermi.tasks import is_misaligned, sample_score


def test_memory_keeps_top_l_and_ascending_order():
    m = Memory(3)
    for i, s in enumerate([0.2, 0.9, 0.5, 0.1, 0.7]):
        m.add(Candidate(f"p{i}", s))
    assert [c.prompt for c in m.ranked()] == ["p1", "p4", "p2"]
    assert [c.score for c in m.ascending()] == [0.5, 0.7, 0.9]
    assert m.reference("best").prompt == "p1" and m.reference("worst").prompt == "p2"
    assert m.best_score == 0.9 and len(m) == 3 and "p4" in m


def test_memory_ties_keep_first_seen():
    m = Memory(2)
    assert m.add(Candidate("a", 0.5))
    assert m.add(Candidate("b", 0.5))
    assert not m.add(Candidate("c", 0.5))  # equal score, seen later: not kept
    assert [c.prompt for c in m.ranked()] == ["a", "b"]
    assert [c.prompt for c in m.ascending()] == ["b", "a"]


def test_candidate_round_trip():
    c = Candidate("x", 0.25, (1, 3), (0, None, 1, 2), 4)
    assert Candidate.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("reply,text,how", [
    ("[Answer as a conservative retiree would.]", "Answer as a conservative retiree would.",
     "brackets"),
    ("Here is a new text: [short] and [the much longer bracketed text wins]",
     "the much longer bracketed text wins", "brackets"),
    ("[outer [inner text here] tail]", "inner text here", "brackets"),
    ("Sure! Here is the new text: Think like a voter from the South.",
     "Think like a voter from the South.", "fallback"),
    ("New text: \"Be a careful citizen.\"", "Be a careful citizen.", "fallback"),
    ("[Answer like a parent who worries about", "Answer like a parent who worries about",
     "unclosed"),
    ("<INS> [<INS> Be honest.]", "Be honest.", "brackets"),
    ("", None, "none"),
    ("[ ]", None, "none"),
])
def test_parse_prompt(reply, text, how):
    parsed = parse_prompt(reply)
    assert parsed.text == text and parsed.how == how


def test_parse_prompt_without_fallback():
    assert parse_prompt("no brackets at all", fallback="drop").text is None
    assert parse_prompt("[kept]", fallback="drop").text == "kept"


@pytest.mark.parametrize("reply,text,how", [
    (" Answer as a cautious voter would.\nscore: 50", "Answer as a cautious voter would.", "line"),
    # seen from Qwen 1.5B: the next field on the text's own line
    ("I have a boyfriend, not a husband. score: 44", "I have a boyfriend, not a husband.", "line"),
    ("Keep the score: it matters.", "Keep the score: it matters.", "line"),
    ("score: 40", None, "none"),
])
def test_parse_continuation(reply, text, how):
    parsed = parse_continuation(reply)
    assert (parsed.text, parsed.how) == (text, how)


def test_rop_selects_prompt_best_on_neighbours():
    # 3 prompts x 4 training questions; prompt 1 is right on q0,q1; prompt 2 on q2,q3
    correctness = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=float)
    sim = np.array([[0.9, 0.8, 0.1, 0.0],    # near q0,q1 -> prompt 1
                    [0.0, 0.1, 0.9, 0.8],    # near q2,q3 -> prompt 2
                    [0.5, 0.5, 0.5, 0.5]])   # ties: first 2 indices (q0,q1) -> prompt 1
    assert select_prompts(correctness, sim, k=2) == [1, 2, 1]
    # all equal on the neighbours: first prompt
    assert select_prompts(np.ones((3, 4)), sim, k=3) == [0, 0, 0]
    assert best_prompt(correctness) == 1
    with pytest.raises(ValueError):
        select_prompts(correctness, np.ones((1, 5)))


def test_sample_scores_per_task_type():
    assert sample_score("choice", 2, 2) == 1.0 and sample_score("choice", None, 2) == 0.0
    assert sample_score("tag", "Comedy ", "comedy") == 1.0
    assert sample_score("rating", 4, 5) == pytest.approx(0.75)
    assert sample_score("rating", 1, 5) == 0.0
    assert sample_score("rating", None, 2) == 0.25  # unparseable -> farthest rating (5)
    assert sample_score("title", "Deep learning for graphs", "Deep learning for graphs") == 1.0
    assert 0.0 < sample_score("title", "learning graphs", "Deep learning for graphs") < 1.0
    assert is_misaligned(0.75, 1.0) and not is_misaligned(1.0, 1.0)
    assert is_misaligned(0.1, 0.2) and not is_misaligned(0.3, 0.2)
