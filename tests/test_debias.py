"""Corrections of choice scores (runtime.llm.debias) and their scoring modes, on a fake model
whose letter scores are a known prior plus known content."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from personalign.runtime.errors import ConfigError
from personalign.runtime.llm import debias
from personalign.runtime.llm.cache import CallCache
from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.llm.types import ChoiceItem, ChoiceResult

LETTER_PRIOR = np.array([6.0, 1.0, 0.0, 0.5])  # logits: "A" swamps everything
CONTENT = {"red": 2.0, "green": 0.0, "blue": 1.0, "grey": -1.0,
           "tea": -1.0, "milk": 0.5, "water": 1.5, "juice": 0.0}


def _item(question: str, options, prefix: str = "") -> ChoiceItem:
    listed = " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(options))
    return ChoiceItem(prompt=f"Question: {question}\nAnswer choices: {listed}\nAnswer:",
                      options=tuple(options), prefix=prefix)


class PriorPlusContent(FakeLLM):
    """Letter log-probs = letter prior + content of the option listed at that letter; content
    counts only when a real question is asked (content-free inputs give the prior alone)."""

    def _score(self, items, method, progress):
        out = []
        for item in items:
            listed = re.findall(r"\(([A-Z])\) (\w+)", item.prompt)
            asked = "N/A" not in item.prompt and "[MASK]" not in item.prompt \
                and not item.prompt.startswith("Question:\n")
            raw = [LETTER_PRIOR[i] + (CONTENT[o] if asked else 0.0)
                   for i, (_, o) in enumerate(listed)]
            lp = debias.log_softmax(raw)
            out.append(ChoiceResult(lp.tolist(), int(lp.argmax())))
            self._count(calls=1)
        return out


ITEMS = [_item(f"Which colour is number {i}?", ["red", "green", "blue", "grey"][i % 2:])
         for i in range(6)]
ITEMS += [_item(f"Which drink do you like {i}?", ["tea", "milk", "water", "juice"])
          for i in range(6)]


def _content_choice(item: ChoiceItem) -> int:
    return int(np.argmax([CONTENT[o] for o in item.options]))


def test_plain_letters_answer_a_everywhere_and_pride_follows_the_content():
    llm = PriorPlusContent()
    plain = llm.score_choices(ITEMS, "letter")
    assert {r.choice for r in plain} == {0}
    for method in ("letter-pride", "letter-pride-prefix"):
        results = llm.score_choices(ITEMS, method)
        assert [r.choice for r in results] == [_content_choice(it) for it in ITEMS], method
        for r, it in zip(results, ITEMS):
            assert sum(math.exp(x) for x in r.logprobs) == pytest.approx(1.0)
            expected = debias.log_softmax([CONTENT[o] for o in it.options])
            assert r.logprobs == pytest.approx(expected.tolist(), abs=1e-9)


def test_pride_runs_permutations_on_a_share_and_counts_them():
    llm = PriorPlusContent()
    llm.score_choices(ITEMS, "letter-pride")
    # Groups by option count (3 and 4 options): one estimation item each, n passes per one.
    groups = debias.estimation_items(ITEMS, per_prefix=False)
    assert sorted(len(v) for v in groups.values()) == [1, 1]
    assert llm.usage.calls == len(ITEMS) + (3 - 1) + (4 - 1)
    assert llm.usage.scored_items == len(ITEMS)


def test_prior_estimates_the_letter_prior_from_permutations():
    item = ITEMS[-1]
    rows = [debias.log_softmax(LETTER_PRIOR + [CONTENT[item.options[(j + k) % 4]]
                                               for j in range(4)]) for k in range(4)]
    assert np.exp(debias.item_prior(rows)) == pytest.approx(
        np.exp(debias.log_softmax(LETTER_PRIOR)))
    assert debias.permutation_content(rows) == pytest.approx(
        debias.log_softmax([CONTENT[o] for o in item.options]))


def test_cyclic_permutation_moves_only_the_listed_options():
    item = _item("Is red or blue nicer than green?", ["red", "green", "blue"])
    shifted = debias.cyclic_permutation(item, 1)
    assert shifted.prompt == ("Question: Is red or blue nicer than green?\n"
                              "Answer choices: (A) green (B) blue (C) red\nAnswer:")
    assert shifted.options == item.options and shifted.prefix == item.prefix
    assert debias.cyclic_permutation(item, 3) == item


def test_content_free_keeps_the_label_and_the_options():
    item = _item("Is red nicer?", ["red", "green"])
    assert debias.content_free(item, "N/A").prompt == \
        "Question: N/A\nAnswer choices: (A) red (B) green\nAnswer:"
    assert debias.content_free(item, "").prompt.startswith("Question:\nAnswer choices:")


def test_prompt_without_lettered_options_is_a_config_error():
    llm = PriorPlusContent()
    bare = ChoiceItem(prompt="Question: red or green?\nAnswer:", options=("red", "green"))
    for method in ("letter-pride", "letter-calibrated"):
        with pytest.raises(ConfigError):
            llm.score_choices([bare], method)


def test_calibration_divides_out_the_content_free_prior():
    llm = PriorPlusContent()
    results = llm.score_choices(ITEMS, "letter-calibrated")
    assert [r.choice for r in results] == [_content_choice(it) for it in ITEMS]
    p, p_cf = np.log([0.6, 0.3, 0.1]), np.log([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1]])
    expected = debias.log_softmax(np.log([0.6 / 0.7, 0.3 / 0.2, 0.1 / 0.1]))
    assert debias.calibrate(p, p_cf) == pytest.approx(expected)
    assert int(np.argmax(debias.calibrate(p, p_cf))) == 1


def test_pmi_subtracts_the_premise_and_mean_divides_by_length():
    sums, premise = [-2.0, -5.0], [-1.0, -6.0]
    assert int(np.argmax(sums)) == 0
    assert debias.pmi(sums, premise) == pytest.approx(debias.log_softmax([-1.0, 1.0]))
    assert debias.per_unit([-4.0, -6.0], [1, 3]) == pytest.approx(
        debias.log_softmax([-4.0, -2.0]))


def test_generate_and_parse_fallback_is_refused():
    class NoLogprobs(FakeLLM):
        def _score(self, items, method, progress):
            return [ChoiceResult([0.0] + [-math.inf] * (len(it.options) - 1), 0, raw="A")
                    for it in items]

    with pytest.raises(ConfigError, match="log-probs"):
        NoLogprobs().score_choices(ITEMS, "letter-pride")


def test_pride_cache_key_holds_the_estimation_items(tmp_path):
    cache = CallCache(tmp_path / "c")
    first = PriorPlusContent(cache=cache)
    results = first.score_choices(ITEMS, "letter-pride")
    again = PriorPlusContent(cache=cache)
    assert [r.logprobs for r in again.score_choices(ITEMS, "letter-pride")] == \
        [r.logprobs for r in results]
    assert again.usage.calls == 0 and again.usage.cache_hits == len(ITEMS)
    # Without the old estimation items the prior comes from other items: no stale hits.
    old = {e for group in debias.estimation_items(ITEMS, False).values() for e in group}
    rest = [it for it in ITEMS if it not in old]
    other = PriorPlusContent(cache=cache)
    other.score_choices(rest, "letter-pride")
    assert other.usage.cache_hits == len(rest)  # only the plain letter passes were cached
    new = {e for group in debias.estimation_items(rest, False).values() for e in group}
    assert other.usage.calls == sum(len(e.options) - 1 for e in new)
