"""FSPO's user-description step (rat, and models trained on the user-description variant), the
rejected-option rule a model's manifest carries, on fakes: the prompts the model is asked."""

import json

import pytest

from personalign.bench.preferences import _score
from personalign.bench.projection import project_run
from personalign.cli.fspo_train_cmd import _episode_models
from personalign.fspo.data.episodes import transform_prompt
from personalign.fspo.data.serialization import (
    TASK_DESCRIPTION, Shot, describe_first, serialize_prompt,
)
from personalign.fspo.description import DESCRIPTION_HEADER, DESCRIPTION_TOKENS
from personalign.fspo.personalizer import RESPONSE_HEADER
from personalign.methods import MethodSettings, build
from personalign.runtime.data.records import User
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import make_user

WRITTEN = "Likes to agree."


def fake_model(monkeypatch) -> FakeLLM:
    """The FSPO model every fspo method answers with: writes WRITTEN, records what it scores."""
    llm = FakeLLM(responder=lambda text, i: f" {WRITTEN}\n", chooser=lambda item: 0)
    llm.items = []
    scorer = llm._score

    def score(items, method, *args, **kw):
        llm.items += list(items)
        return scorer(items, method, *args, **kw)

    llm._score = score
    monkeypatch.setattr("personalign.fspo.personalizer.fspo_llm", lambda models, spec: llm)
    return llm


def model_folder(tmp_path, **fields):
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    manifest = {"finetune": "lora", "base": "smollm2-135m-instruct", "adapter": "adapter",
                **fields}
    (folder / "fspo_model.json").write_text(json.dumps(manifest))
    return folder


def split(user: User, n: int = 20):
    return User(user.user_id, dict(user.profile), user.opinions[:n]), list(user.opinions[n:n + 3])


def test_describe_first_is_the_variants_prompt():
    shots = [Shot("Tea or coffee?", "Tea", "Coffee")]
    default = serialize_prompt(shots, "Cats or dogs?")
    assert describe_first(default) == serialize_prompt(shots, "Cats or dogs?",
                                                       "user-description")
    assert TASK_DESCRIPTION in describe_first(default)
    assert describe_first(describe_first(default)) == describe_first(default)
    zero = serialize_prompt([], "Cats or dogs?")
    assert describe_first(zero) == serialize_prompt([], "Cats or dogs?", "user-description")
    rec = {"prompt": default, "user_id": "u"}
    assert transform_prompt(rec, "rat") == describe_first(default)


def test_rat_spec_parsing():
    models = SharedModels()
    method = build("fspo:base:rat", models)
    assert (method.model, method.rat, method.describes_first) == ("base", True, True)
    assert build("fspo:base", models).rat is False
    with pytest.raises(ConfigError, match="contains ':' is not supported"):
        build("fspo:/runs/a:b:rat", models)
    with pytest.raises(ConfigError, match="fspo:RUN:rat"):
        build("fspo:base:sideways", models)
    with pytest.raises(ConfigError, match="fspo:RUN:rat"):
        build("pooled:base:rat", models)


def test_rat_writes_a_description_per_question_and_answers_after_it(monkeypatch):
    llm = fake_model(monkeypatch)
    train, questions = split(make_user("u1", 30))
    method = build("fspo:base:rat", SharedModels(), MethodSettings(fspo_shots=4)).fit(train)
    assert method.describe().description is None  # nothing written yet
    answers = method.predict(questions)
    assert len(answers) == 3
    asked = [p for p in llm.prompts_seen]
    assert len(asked) == 3 and all(p.endswith(f"## Question\n{q.question}\nOptions: "
                                              + " | ".join(q.options) + "\n" + DESCRIPTION_HEADER)
                                   for p, q in zip(asked, questions))
    assert all(TASK_DESCRIPTION in p and p.count("# Example") == 4 for p in asked)
    # the options are scored after the written description, as the variant's completions
    assert all(item.prefix.endswith(f"{DESCRIPTION_HEADER}{WRITTEN}\n") for item in llm.items)
    assert method.describe().description == WRITTEN
    assert llm.usage.by_phase["fspo/describe"].calls >= 1
    # a chat writes the description, then answers after it
    plan = method.chat_plan([{"role": "user", "content": "Taxes?"}])
    assert plan.prompt.endswith(f"{DESCRIPTION_HEADER}{WRITTEN}\n{RESPONSE_HEADER}")
    assert plan.applied["description"] == WRITTEN


def test_a_user_description_model_gets_the_true_description_or_writes_one(monkeypatch,
                                                                          tmp_path):
    llm = fake_model(monkeypatch)
    folder = model_folder(tmp_path, variant="user-description")
    user, questions = split(make_user("u1", 30))
    method = build(f"fspo:{folder}", SharedModels(), MethodSettings(fspo_shots=2)).fit(user)
    assert method.describes_first and not method.rat
    method.predict(questions)
    assert not llm.prompts_seen  # the profile is the description: nothing to write
    true = "Age: 30-49"
    assert all(TASK_DESCRIPTION in i.prefix and f"{DESCRIPTION_HEADER}{true}" in i.prefix
               for i in llm.items)
    nameless = User("u2", {}, user.opinions)
    method.fit(nameless).predict(questions)
    assert len(llm.prompts_seen) == 3 and method.describe().description == WRITTEN
    # with rat the model writes even where the profile is known
    rat = build(f"fspo:{folder}:rat", SharedModels(), MethodSettings(fspo_shots=2)).fit(user)
    rat.predict(questions)
    assert len(llm.prompts_seen) == 6


def test_the_model_manifest_sets_the_rejected_rule_of_the_shots(monkeypatch, tmp_path):
    fake_model(monkeypatch)
    user = make_user("u1", 20)
    shots = {}
    for rule in ("every-other", None):
        folder = model_folder(tmp_path / (rule or "older"), **({"rejected_rule": rule}
                                                                 if rule else {}))
        method = build(f"fspo:{folder}", SharedModels())
        shots[rule] = method._pairs(user)
    assert len(shots["every-other"]) == 2 * len(user.opinions)  # 3 options: 2 pairs each
    assert {p.meta["rejected_rule"] for p in shots[None]} == {"ordinal-farthest"}
    base = build("fspo:base", SharedModels())._pairs(user)
    assert [p.to_dict() for p in base] == [p.to_dict() for p in shots[None]]


def test_projection_counts_the_written_descriptions():
    user = make_user("u1", 30)
    splits = [type("S", (), {"train": User("u1", {}, user.opinions[:20]),
                             "test": list(user.opinions[20:30])})()]
    plain, rat = (project_run([s], splits, MethodSettings())[s]
                  for s in ("fspo:base", "fspo:base:rat"))
    assert "fspo/describe" not in plain
    assert rat["fspo/describe"]["calls_per_user"] == 10
    assert rat["fspo/predict"]["tokens"] == plain["fspo/predict"]["tokens"] \
        + 10 * DESCRIPTION_TOKENS


def test_episode_scoring_in_rat_mode_reads_the_options_after_a_written_description():
    llm = FakeLLM(responder=lambda text, i: WRITTEN)
    llm.items = []
    scorer = llm._score
    llm._score = lambda items, *a, **kw: (llm.items.extend(items), scorer(items, *a, **kw))[1]
    prompt = serialize_prompt([Shot("Tea or coffee?", "Tea", "Coffee")], "Cats or dogs?")
    rec = {"prompt": prompt, "user_id": "u", "chosen": f"{RESPONSE_HEADER}Cats\n",
           "rejected": f"{RESPONSE_HEADER}Dogs\n",
           "meta": {"query_meta": {"options": ["Cats", "Dogs"], "answer": 0}}}
    scores = _score(llm, [rec], "rat", {}, "m/score")
    assert len(scores[0]) == 4  # chosen, rejected, two options: one item after the description
    [item] = llm.items
    assert item.prefix == describe_first(prompt) + f"{DESCRIPTION_HEADER}{WRITTEN}\n"
    assert llm.prompts_seen == [describe_first(prompt) + DESCRIPTION_HEADER]
    llm.items.clear()
    _score(llm, [rec], "as-is", {}, "m/score")  # a default-variant episode: no description
    assert llm.items[0].prefix == prompt and len(llm.prompts_seen) == 1


def test_fspo_eval_takes_the_rat_mode():
    [m] = _episode_models(["r=base:rat"], None)
    assert (m.model, m.mode) == ("base", "rat")
    with pytest.raises(ConfigError, match="contains ':' is not supported"):
        _episode_models(["r=/runs/a:b:rat"], None)
