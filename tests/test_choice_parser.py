"""The tolerant choice parser: letters, "(B)", "Answer: C", numbers, option text, longest
match, and None (never an exception) for what names no option."""

from __future__ import annotations

import random
import string

import pytest

from personalign.runtime.llm.choice_parser import parse_choice

YN = ("Yes", "No", "Not sure")
LIKELY = ("Very likely", "Likely", "Unlikely", "Very unlikely")
AMOUNT = ("A great deal", "A fair amount", "Not too much", "Not at all")


@pytest.mark.parametrize("text,expected", [
    ("B", 1), ("C", 2), ("A", 0), ("  B  ", 1),
    ("(B)", 1), ("B)", 1), ("B.", 1), ("B:", 1), ("B, because it is cheaper", 1),
    (" (A) Yes", 0), ("**(B)** No", 1), ("(C) Not sure", 2),
])
def test_letters(text, expected):
    assert parse_choice(text, YN) == expected


@pytest.mark.parametrize("text,expected", [
    ("Answer: C", 2), ("answer: (c)", 2), ("Answer:B", 1), ("The answer is B.", 1),
    ("I think the answer is (A)", 0), ("My answer choice is C", 2),
])
def test_answer_phrases(text, expected):
    assert parse_choice(text, YN) == expected


@pytest.mark.parametrize("text,expected", [("1", 0), ("2", 1), ("3.", 2), ("(1)", 0),
                                           ("1) Yes", 0)])
def test_numbers(text, expected):
    assert parse_choice(text, YN) == expected


def test_number_out_of_range_is_none():
    assert parse_choice("4", YN) is None
    assert parse_choice("0", YN) is None


@pytest.mark.parametrize("text,expected", [
    ("No", 1), ("no.", 1), ("Not sure", 2), ("I'm not sure", 2), ("yes!", 0),
])
def test_option_text(text, expected):
    assert parse_choice(text, YN) == expected


@pytest.mark.parametrize("text,expected", [
    ("Likely", 1), ("Very likely", 0), ("very unlikely", 3), ("Unlikely", 2),
    ("I think it is unlikely", 2), ("I'd say very likely.", 0),
])
def test_longest_option_wins(text, expected):
    # "likely" is inside "very likely" and "unlikely": the longest named option wins.
    assert parse_choice(text, LIKELY) == expected


def test_numeric_options_prefer_option_text():
    ratings = ("1", "2", "3", "4", "5")
    assert parse_choice("4", ratings) == 3
    assert parse_choice("Answer: 5", ratings) == 4
    ten = tuple(str(i) for i in range(1, 11))
    assert parse_choice("10", ten) == 9
    assert parse_choice("$15", ("$10", "$15")) == 1


@pytest.mark.parametrize("text", ["", "banana", "D", "answer is D", "BC", "I",
                                  "Cannot decide between them"])
def test_unparseable_is_none(text):
    assert parse_choice(text, YN) is None


def test_never_raises_on_noise():
    rng = random.Random(0)
    alphabet = string.printable + "äé€…“”()[]*"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        options = tuple("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
                        for _ in range(rng.randint(1, 6)))
        result = parse_choice(text, options)
        assert result is None or 0 <= result < len(options)


# Shapes a naive letter regex gets wrong.
@pytest.mark.parametrize("text,expected", [("A fair amount", 1), ("A fair amount.", 1)])
def test_option_text_starting_with_article(text, expected):
    assert parse_choice(text, AMOUNT) == expected


def test_article_is_not_a_letter():
    assert parse_choice("A great question! B", YN) != 0
    assert parse_choice("A vegetarian diet, mostly.", ("Meat", "Fish", "Plants")) is None


@pytest.mark.parametrize("text,expected", [("**B**", 1), ("Option B", 1),
                                           ("The correct option is (B).", 1), ("b", 1),
                                           ("Answer: 2", 1)])
def test_more_answer_shapes(text, expected):
    assert parse_choice(text, YN) == expected


def test_option_named_first_wins_over_later_mentions():
    # Generations explain after answering: the option the text starts with is the answer.
    assert parse_choice("Yes. Not everyone would say no, though.", YN) == 0
