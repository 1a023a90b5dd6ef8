"""Fermi with past opinions in context (``context_shots``, the ``fermi+fewshot`` method):
what the task model is shown at fit and at prediction, persistence, and older saved files."""

import json

from personalign.fermi.config import FermiConfig
from personalign.fermi.optimizer import Fermi
from personalign.runtime.prompts import answered_block, question_block
from personalign.runtime.retrieval import retrieve
from personalign.methods import MethodSettings, build, load
from personalign.runtime.data.records import User
from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import BagEmbedder, keyword_task_llm, make_user, scripted_optimizer


def recording_task_llm() -> tuple[FakeLLM, list[str]]:
    """The keyword task model, keeping the text of every item it scores."""
    seen: list[str] = []
    inner = keyword_task_llm().chooser

    def chooser(item):
        seen.append(item.prefix + item.prompt)
        return inner(item)

    return FakeLLM(chooser=chooser, model_id="fake-task"), seen


def _fit(user, embedder, **cfg):
    task, seen = recording_task_llm()
    fermi = Fermi(FermiConfig(**{"iterations": 2, "num_candidates": 2, **cfg}), task,
                  scripted_optimizer(), embedder)
    fermi.fit(user.opinions[:20], user.profile, user_id=user.user_id)
    return fermi, seen


def test_retrieval_can_leave_the_question_itself_out(user, embedder):
    ops = list(user.opinions[:12])
    with_self = retrieve(ops, ops, 3, embedder=embedder)
    assert all(i in idx for i, idx in enumerate(with_self))  # as similar as can be
    without = retrieve(ops, ops, 3, embedder=embedder, leave_out_self=True)
    assert all(len(idx) == 3 and i not in idx for i, idx in enumerate(without))


def test_shots_are_scored_at_fit_without_the_question_own_answer(user, embedder):
    fermi, seen = _fit(user, embedder, context_shots=2, context_at_fit=True)
    assert seen  # every scored text: prompt, two answered opinions, the question
    for text in seen:
        blocks = text.split("\n\n")
        question, shots = blocks[-1], blocks[-3:-1]
        assert question.endswith("Answer:") and all(s[-1] in "ABC" for s in shots)
        assert all(not s.startswith(question) for s in shots)
    assert len(fermi.context_opinions) == 20


def test_shots_only_at_prediction_by_default(user, embedder):
    fermi, seen = _fit(user, embedder, context_shots=3)
    assert seen and all(text.count("Question:") == 1 for text in seen)
    seen.clear()
    questions = user.opinions[20:24]
    details = fermi.answers(questions)
    assert len(seen) == 4 and all(text.count("Question:") == 4 for text in seen)
    shown = {o.qid: o for o in user.opinions[:20]}
    for d, q in zip(details, questions):
        text, = [t for t in seen if t.endswith(question_block(q.question, q.options))]
        # the most similar past opinion sits last, next to the question
        assert len(d.shots) == 3
        assert text.split("\n\n")[-2] == answered_block(shown[d.shots[0]])


def test_context_opinions_round_trip(user, embedder, tmp_path):
    fermi, _ = _fit(user, embedder, context_shots=2)
    path = fermi.save(tmp_path / "u1.json")
    loaded = Fermi.load(path, task_llm=keyword_task_llm(), embedder=embedder)
    assert loaded.context_opinions == fermi.context_opinions
    assert loaded.predict(user.opinions[20:30]) == fermi.predict(user.opinions[20:30])


def test_fermi_fewshot_reads_a_file_saved_before_context_shots(tmp_path):
    models = SharedModels.of(keyword_task_llm(), scripted_optimizer(), BagEmbedder())
    user = make_user("u1", 30)
    train = User(user.user_id, dict(user.profile), user.opinions[:20])
    questions = list(user.opinions[20:26])
    method = build("fermi+fewshot", models, MethodSettings(preset="tiny")).fit(train)
    assert method.config.context_shots == 3 and not method.config.context_at_fit
    answers = method.predict(questions)
    # what the earlier version wrote: k beside the config, the opinions in the state
    saved = json.loads(method.save(tmp_path / "new.json").read_text())
    for part in (saved["params"]["config"], saved["state"]["config"]):
        del part["context_shots"], part["context_at_fit"]
    saved["params"]["k"] = 3
    saved["state"]["version"] = 2
    saved["state"]["opinions"] = saved["state"].pop("context_opinions")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(saved))
    again = load(old, models)
    assert again.config.context_shots == 3 and not again.config.context_at_fit
    assert [(a.choice, a.shots) for a in again.predict(questions)] == \
        [(a.choice, a.shots) for a in answers]
