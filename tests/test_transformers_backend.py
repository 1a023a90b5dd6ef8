"""The transformers backend against the real embedded models."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from personalign.runtime.llm.reference_scoring import plain_score
from personalign.runtime.llm.types import ChoiceItem, SamplingParams

pytestmark = pytest.mark.real_model
BACKEND = "personalign.runtime.llm.transformers_backend"

EASY = [("What is the capital of France?", ("Berlin", "Paris", "Madrid")),
        ("What color is the sky on a clear day?", ("Green", "Red", "Blue")),
        ("Which animal says meow?", ("Dog", "Cow", "Cat")),
        ("What do bees make?", ("Honey", "Steel", "Plastic")),
        ("What is frozen water called?", ("Sand", "Ice", "Smoke"))]
GOLD = [1, 2, 2, 0, 1]


def _cloze_items(prefix: str = "") -> list[ChoiceItem]:
    return [ChoiceItem(prompt=f"Question: {q}\nAnswer:", options=o, prefix=prefix)
            for q, o in EASY]


def _lettered_items(prefix: str) -> list[ChoiceItem]:
    return [ChoiceItem(prefix=prefix, options=o, prompt=f"Question: {q}\nAnswer choices: "
                       + " ".join(f"({chr(65 + i)}) {x}" for i, x in enumerate(o))
                       + "\nAnswer:") for q, o in EASY]


@pytest.mark.parametrize("model", ["gemma", "smollm"])
def test_option_scoring_picks_right_answers_on_easy_questions(model, request):
    llm = request.getfixturevalue(model)
    results = llm.score_choices(_cloze_items(), "text")
    correct = sum(r.choice == g for r, g in zip(results, GOLD))
    assert correct >= 4, [r.choice for r in results]


@pytest.mark.parametrize("method", ["letter", "text"])
def test_engine_matches_plain_scoring(gemma, method):
    prefix = "A careful person answers the following question.\n\n"
    items = _lettered_items(prefix)
    fast = gemma.score_choices(items, method)
    plain = plain_score(gemma, items, method)
    assert [f.choice for f in fast] == [p.choice for p in plain]
    for f, p in zip(fast, plain):
        assert f.logprobs == pytest.approx(p.logprobs, abs=1e-3)


def test_loglikelihood_prefers_the_true_continuation(gemma):
    good, bad = gemma.loglikelihood([("The capital of France is", " Paris"),
                                     ("The capital of France is", " Berlin")])
    assert good > bad


def test_generation_returns_sensible_text(smollm):
    params = SamplingParams(n=2, temperature=0.8, max_tokens=30, seed=3)
    texts = smollm.generate([[{"role": "user", "content": "Name a fruit that is yellow."}]],
                            params)[0]
    assert len(texts) == 2 and all(t.strip() for t in texts)
    greedy = smollm.generate([[{"role": "user", "content": "Say hello."}]],
                             SamplingParams(max_tokens=12))[0][0]
    assert greedy.strip()
    assert smollm.usage.completion_tokens > 0


def test_generation_stops_at_stop_string(gemma):
    text = gemma.generate(["1, 2, 3, 4, 5, 6,"],
                          SamplingParams(max_tokens=30, stop=(" 9",)))[0][0]
    assert " 9" not in text and "7" in text


def test_seeded_sampling_is_reproducible(smollm):
    params = SamplingParams(n=2, temperature=1.0, max_tokens=15, seed=11)
    prompt = [[{"role": "user", "content": "Invent a name for a cat."}]]
    assert smollm.generate(prompt, params) == smollm.generate(prompt, params)


def test_embeddings_rank_paraphrase_above_unrelated(embedder):
    sims = embedder.similarity(["How old are you?"],
                               ["What is your age?", "The stock market fell sharply today."])
    assert sims[0, 0] > sims[0, 1] + 0.2


def test_decode_loop_matches_hf_generate_and_reuses_the_prompt(smollm):
    import torch

    prompt = [{"role": "user", "content": "List three colors."}]
    ids = smollm.prompt_ids(prompt)
    with torch.inference_mode():
        hf = smollm.model.generate(input_ids=torch.tensor([ids]), do_sample=False,
                                   max_new_tokens=20, pad_token_id=smollm.tokenizer.eos_token_id)
    want = [t for t in hf[0, len(ids):].tolist() if t != smollm.tokenizer.eos_token_id]
    smollm.prompt_cache.clear()
    params = SamplingParams(max_tokens=20)
    with torch.inference_mode():
        first = smollm._decode(ids, 1, params)[0]
        before = smollm.prompt_cache.reused_tokens
        again = smollm._decode(ids, 1, params)[0]
    assert first == want and again == want
    assert smollm.prompt_cache.reused_tokens - before == len(ids) - 1  # only the last token ran


def test_lookup_drafts_give_greedy_text_in_fewer_passes(smollm):
    """Prompt-lookup decoding keeps plain greedy decoding's tokens (SmolLM2 runs in float32
    here, where batched and single-token passes agree) and, on a reply that copies its
    prompt, takes fewer forward passes than tokens."""
    import torch

    prompts = [[{"role": "user", "content": "Repeat this sentence exactly: The quick brown "
                 "fox jumps over the lazy dog near the quiet river bank."}],
               [{"role": "user", "content": "List three colors."}]]
    assert smollm.dtype == "float32"
    passes, texts = {}, []
    try:
        for i, prompt in enumerate(prompts):
            ids = smollm.prompt_ids(prompt)
            rows = {}
            for k in (0, 8):
                smollm.lookup_tokens, smollm.forward_passes = k, 0
                with torch.inference_mode():
                    rows[k] = smollm._decode(ids, 1, SamplingParams(max_tokens=30))[0]
                passes[i, k] = smollm.forward_passes
            assert rows[8] == rows[0], i
            texts.append(smollm.tokenizer.decode(rows[8]))
    finally:
        smollm.lookup_tokens = 8
    assert "quick brown fox jumps over the lazy dog" in texts[0]
    assert passes[0, 8] <= passes[0, 0] // 2, passes


def test_lookup_drafts_past_a_sliding_window_keep_greedy_text(gemma, caplog):
    """Gemma 3's sliding-window layers cannot drop a rejected draft once their window is
    full: decoding goes on without drafts and writes plain greedy decoding's text."""
    import torch

    window = gemma.model.config.sliding_window
    counting = " ".join(str(i) for i in range(1, 400)) + " 1 2 3 4 5 6 7 8 9 10 11 12 13"
    ids = gemma.encode(counting, specials=True)
    assert len(ids) > window
    rows = {}
    try:
        for k in (0, 8):
            gemma.lookup_tokens = k
            with torch.inference_mode(), caplog.at_level(logging.DEBUG, logger=BACKEND):
                rows[k] = gemma._decode(ids, 1, SamplingParams(max_tokens=24))[0]
    finally:
        gemma.lookup_tokens = 8
    assert rows[8] == rows[0] and len(rows[0]) == 24
    assert any("no lookup drafts" in r.message for r in caplog.records)  # the fallback ran


def test_ignore_eos_generates_max_tokens_per_sample(smollm):
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=0, ignore_eos=True)
    gen = smollm._generate([[{"role": "user", "content": "Hi"}]], params)[0]
    assert len(gen.texts) == 3 and gen.completion_tokens == 36


CORRECTED = ["letter-pride", "letter-pride-prefix", "letter-calibrated", "text-mean",
             "text-char", "text-pmi"]


def _log_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def _corrected_reference(llm, items: list[ChoiceItem], method: str) -> list[np.ndarray]:
    """Each correction's formula applied to plain full-forward scores (``plain_raw``: no
    prefix cache, no packed weights), written out here rather than taken from ``debias``."""
    import torch

    from personalign.runtime.llm import debias
    from personalign.runtime.llm.reference_scoring import plain_raw

    def letters(item):
        return _log_softmax(plain_raw(llm, item, "letter"))

    with torch.inference_mode():
        if method.startswith("text"):
            sums = [np.array(plain_raw(llm, it, "text")) for it in items]
            if method == "text-mean":  # mean log-prob per token of the option
                return [_log_softmax(s / [len(llm.option_ids(o)) for o in it.options])
                        for s, it in zip(sums, items)]
            if method == "text-char":  # per character of the option as scored (" " + text)
                return [_log_softmax(s / [len(" " + o) for o in it.options])
                        for s, it in zip(sums, items)]
            # text-pmi: minus the option's log-likelihood after the bare premise "Answer:"
            premise = llm.encode("Answer:", specials=True)
            return [_log_softmax(s - plain_raw(llm, it, "text", context=premise))
                    for s, it in zip(sums, items)]
        if method == "letter-calibrated":  # p / mean p under content-free questions
            out = []
            for it in items:
                free = [np.exp(letters(debias.content_free(it, f)))
                        for f in ("N/A", "", "[MASK]")]
                out.append(_log_softmax(letters(it) - np.log(np.mean(free, axis=0))))
            return out
        # PriDe: the letter prior from the estimation item's cyclic permutations (option i at
        # letter (i - k) mod n under shift k); each other item's letters minus that prior; the
        # estimation item itself scored by its option's mean over the permutations.
        (estimators,) = debias.estimation_items(items, method == "letter-pride-prefix").values()
        n = len(items[0].options)
        perms = {e: [letters(debias.cyclic_permutation(e, k)) for k in range(n)]
                 for e in estimators}
        prior = np.log(np.mean([np.exp(_log_softmax(np.mean(perms[e], axis=0)))
                                for e in estimators], axis=0))
        return [_log_softmax([np.mean([perms[it][k][(i - k) % n] for k in range(n)])
                              for i in range(n)]) if it in perms
                else _log_softmax(letters(it) - prior) for it in items]


@pytest.mark.parametrize("method", CORRECTED)
def test_corrected_modes_run_through_the_engine(gemma, method):
    items = _lettered_items("A careful person answers the following question.\n\n")
    calls = gemma.usage.calls
    results = gemma.score_choices(items, method)
    extra = gemma.usage.calls - calls - len(items)
    want = _corrected_reference(gemma, items, method)
    for item, r, w in zip(items, results, want):
        assert r.logprobs == pytest.approx(w.tolist(), abs=3e-3), item.prompt
        assert r.choice == int(np.argmax(w)) or abs(np.sort(w)[-1] - np.sort(w)[-2]) < 3e-3
    # Letter corrections add permutation or content-free passes, PMI one premise group.
    assert extra > 0 if method.startswith("letter") or method == "text-pmi" else extra == 0


def test_pride_answers_a_less_often_than_letter_scoring_on_dev_questions(gemma, dev_data_path):
    from personalign.runtime.prompts import TASK_INSTRUCTION, choice_item
    from personalign.runtime.data.opinionqa import load_opinionqa
    from personalign.runtime.data.splits import protocol_order

    users = [u for u in load_opinionqa(dev_data_path) if len(u.opinions) >= 25][:3]
    questions = [q for u in users for q in protocol_order(u, 0)[20:28]]
    items = [choice_item(TASK_INSTRUCTION, q) for q in questions]

    def top_share(method):
        choices = [r.choice for r in gemma.score_choices(items, method)]
        return max(choices.count(c) for c in set(choices)) / len(choices)

    plain, pride = top_share("letter"), top_share("letter-pride")
    assert plain > 0.9  # the bias this mode exists for
    assert pride < plain - 0.2, (plain, pride)


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m-instruct"])
def test_direct_tokenizer_load_matches_autotokenizer(name):
    from transformers import AutoTokenizer

    from personalign.runtime import models

    path = models.prepare(name)
    direct, auto = models.load_tokenizer(path), AutoTokenizer.from_pretrained(path)
    texts = ["Question: How much do you trust the news media?\nA. A lot\nB. Not at all\nAnswer:",
             "  naïve café — 3.5% <bos> <start_of_turn>user\n<|im_start|>x", ""]
    for text in texts:
        for specials in (True, False):
            ids = auto(text, add_special_tokens=specials).input_ids
            assert direct(text, add_special_tokens=specials).input_ids == ids
            assert direct.decode(ids, skip_special_tokens=True) == auto.decode(
                ids, skip_special_tokens=True)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "chat_template"):
        assert getattr(direct, attr) == getattr(auto, attr), attr
    if auto.chat_template:
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        assert direct.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) \
            == auto.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def test_lookup_draft_follows_the_latest_longest_match():
    from personalign.runtime.llm.transformers_backend import lookup_draft

    #          0  1  2  3  4  5  6  7  8  9
    context = [1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3]
    assert lookup_draft(context, 2) == [7, 1]  # after the latest earlier "1 2 3"
    assert lookup_draft(context, 0) == []
    assert lookup_draft([5, 6, 4, 6], 3) == [4, 6]  # no "4 6" or "6 4 6" before: "6" alone
    assert lookup_draft([1, 2, 3], 4) == []  # nothing repeats
