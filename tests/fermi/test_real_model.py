"""End to end on the real embedded models with the tiny preset (T=1, K=1): well under a minute."""

import os

import pytest

from personalign.fermi.config import preset
from personalign.fermi.optimizer import Fermi
from personalign.runtime.prompts import choice_item
from personalign.runtime.data.records import Opinion

pytestmark = pytest.mark.real_model

QUESTIONS = [
    ("Should the federal government spend more on roads and bridges?", ("Yes", "No")),
    ("How often do you attend religious services?", ("Weekly", "Monthly", "Never")),
    ("Do you own a gun?", ("Yes", "No")),
    ("Is climate change a major threat?", ("Major threat", "Minor threat", "Not a threat")),
    ("Do you trust national news organizations?", ("A lot", "Some", "Not at all")),
    ("Should taxes on large corporations go up?", ("Go up", "Stay the same", "Go down")),
    ("Do you favor stricter gun laws?", ("Favor", "Oppose")),
    ("How much do you worry about crime in your area?", ("A lot", "A little", "Not at all")),
    ("Is the economy in good shape?", ("Good", "Fair", "Poor")),
    ("Should college be free at public universities?", ("Yes", "No")),
    ("Do you use social media every day?", ("Yes", "No")),
    ("Should the minimum wage be raised?", ("Yes", "No")),
]


@pytest.fixture(scope="module")
def models():
    os.environ.setdefault("PERSONALIGN_THREADS", "1")
    from personalign.runtime.embeddings import Embedder
    from personalign.runtime.llm.factory import load_llm

    return (load_llm("gemma3-270m", cache=False), load_llm("smollm2-135m-instruct", cache=False),
            Embedder())


def test_fermi_tiny_end_to_end(models, tmp_path):
    task, opt, embedder = models
    ops = [Opinion(q, o, i % len(o), qid=f"q{i}") for i, (q, o) in enumerate(QUESTIONS)]
    cfg = preset("tiny", seed=1, final_pool="last_k")  # one rewrite: the pool
    fermi = Fermi(cfg, task, opt, embedder)
    fermi.fit(ops[:8], {"AGE": "65+", "POLPARTY": "Republican", "CREGION": "South"},
              user_id="synthetic")
    res = fermi.result
    assert res.counts["optimizer_replies"] >= 1
    # tiny: K=1, one prompt, so only the 6 optimization questions are cached
    assert len(fermi.pool) == 1 and len(fermi.train_questions) == 6
    assert opt.usage.by_phase["fermi/optimize"].calls >= 1
    assert task.usage.by_phase["fermi/score"].scored_items >= 6
    # The pool prompt's scores are what the task model answers with it, asked directly
    # (uncached, outside Fermi): per question 1 where it matches the user's answer.
    (pool,) = fermi.pool
    by_text = {o.question: o for o in ops}
    train = [by_text[q] for q in fermi.train_questions]
    direct = task.score_choices([choice_item(pool.prompt, q) for q in train], "letter")
    hits = [float(r.choice == q.answer) for r, q in zip(direct, train)]
    assert pool.correctness == hits
    assert pool.train_score == pytest.approx(sum(hits) / len(hits))
    # With one prompt, RoP has one choice: predictions are the task model's answers under it.
    preds = fermi.predict(ops[8:], use_rop=True)
    direct = task.score_choices([choice_item(pool.prompt, q) for q in ops[8:]], "letter")
    assert preds == [r.choice for r in direct]
    path = fermi.save(tmp_path / "fermi.json")
    again = Fermi.load(path, task, opt, embedder)
    assert again.predict(ops[8:], use_rop=True) == preds
