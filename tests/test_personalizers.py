"""The conformance suite: every registered method keeps the Personalizer contract.

fit/predict/save/load round trip with identical answers after load, cost counted in the LLM
usage, and bad input rejected with the project's errors. Methods that need no trained model run
on fakes; the FSPO family runs on the real embedded SmolLM2 (marked real_model).
"""

import math

import numpy as np
import pytest

from personalign.methods import MethodSettings, build, load, method_names
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import BagEmbedder, keyword_task_llm, make_user, scripted_optimizer

FAKE_SPECS = ["random", "vanilla", "profile", "fewshot", "fewshot:bm25", "opro", "fermi_norop",
              "fermi", "fermi+fewshot", "fermi_transfer:fake-fit"]
REAL_SPECS = ["fspo:base", "fspo:base:rat", "pooled:base", "oracle"]
# the DSPy peers (extra personalign[peers]) on fakes that answer DSPy's chat format
PEER_SPECS = ["dspy-gepa", "dspy-miprov2", "dspy-bootstrap"]


def test_every_registered_method_is_covered():
    covered = {s.split(":")[0] for s in FAKE_SPECS + REAL_SPECS + PEER_SPECS}
    assert covered == set(method_names())


def _split(user: User, n_train: int = 20, n_test: int = 6):
    train = User(user.user_id, dict(user.profile), user.opinions[:n_train])
    return train, list(user.opinions[n_train:n_train + n_test])


def check_contract(spec: str, models: SharedModels, tmp_path, other_models: SharedModels):
    train, questions = _split(make_user("u1", 30))
    method = build(spec, models, MethodSettings(preset="tiny"))
    with pytest.raises(ConfigError):
        method.predict(questions)  # not fitted yet
    assert method.fit(train) is method and method.user_id == "u1"
    answers = method.predict(questions)
    assert len(answers) == len(questions)
    for a, q in zip(answers, questions):
        assert len(a.logprobs) == len(q.options)
        assert math.isclose(float(np.logaddexp.reduce(a.logprobs)), 0.0, abs_tol=1e-4)
        assert a.choice is None or 0 <= a.choice < len(q.options)
        assert 0.0 <= a.correctness(q.answer) <= 1.0
    assert 0.0 <= method.score(questions) <= 1.0
    # cost: the predict phase of this method is counted by the LLM that answered
    if spec != "random":
        phases = {p for llm in models.loaded_llms().values() for p in llm.usage.by_phase}
        assert f"{method.name}/predict" in phases
    # save / load: the same answers
    path = method.save(tmp_path / f"{method.name}.json")
    again = load(path, models).predict(questions)
    assert [a.choice for a in again] == [a.choice for a in answers]
    np.testing.assert_allclose([a.logprobs for a in again], [a.logprobs for a in answers],
                               atol=1e-6)
    # a fit measured with other models is refused where the method depends on them
    if "task" in method.depends_on:
        with pytest.raises(ConfigError, match="task"):
            load(path, other_models)
    # bad input: the project's errors, naming what is wrong
    with pytest.raises(DataError):
        method.predict(["not an opinion"])
    with pytest.raises(DataError, match="option"):
        method.predict([Opinion("One option only?", ("Yes",), 0)])
    with pytest.raises(DataError):
        build(spec, models, MethodSettings(preset="tiny")).fit("not a user")
    reply = method.respond([{"role": "user", "content": "What do you think of taxes?"}],
                           max_tokens=8)
    assert isinstance(reply, str)
    return method


def _fake_models(task_id: str = "fake-task") -> SharedModels:
    task = keyword_task_llm()
    task.model_id = task_id
    models = SharedModels.of(task, scripted_optimizer(), BagEmbedder())
    # the task model fermi_transfer:fake-fit fits with
    models._loaded[("fake-fit", ())] = FakeLLM(model_id="fake-fit")
    return models


@pytest.mark.parametrize("spec", FAKE_SPECS)
def test_contract_on_fakes(spec, tmp_path):
    check_contract(spec, _fake_models(), tmp_path, _fake_models("another-task"))


@pytest.mark.parametrize("spec", PEER_SPECS)
def test_contract_of_the_dspy_peers(spec, tmp_path):
    pytest.importorskip("dspy", reason="the DSPy peers need the extra personalign[peers]")
    from tests.peer_fakes import peer_models

    check_contract(spec, peer_models(), tmp_path, peer_models("another-task"))


def test_fermi_reports_its_fit_and_a_bad_argument_fails_early():
    models = _fake_models()
    train, _ = _split(make_user("u1", 30))
    report = build("fermi", models, MethodSettings(preset="tiny")).fit(train).fit_report()
    assert report["pool"] and "failures" in report and "collapsed" in report
    with pytest.raises(ConfigError):
        build("vanilla:extra", models)
    with pytest.raises(ConfigError):
        build("pooled", models)  # needs a trained model
    with pytest.raises(Exception, match="fspo_model.json"):
        build("fspo:/nonexistent/run", models)


@pytest.mark.real_model
@pytest.mark.parametrize("spec", REAL_SPECS)
def test_contract_on_the_real_fspo_family(spec, tmp_path):
    method = check_contract(spec, _fake_models(), tmp_path, _fake_models("another-task"))
    # the user's shots are what the model is conditioned on (none for pooled)
    assert (len(method.shots) == 0) == (method.name == "pooled")
    # rat: the answers (and the chat) followed a description the model wrote
    assert (method.describe().description is not None) == (spec == "fspo:base:rat")


def test_one_model_on_two_backends_stays_two_models():
    """The service's default: Qwen 1.5B on the engine (task) and on llama.cpp (optimizer),
    one model id. Loaded models are kept by name: the optimizer must not replace the task."""
    task, optimizer = FakeLLM(model_id="qwen"), FakeLLM(model_id="qwen")
    optimizer.backend = "llamacpp"
    models = SharedModels.of(task, optimizer)
    assert models.task_llm is task and models.optimizer_llm is optimizer
    assert SharedModels.of(task).optimizer_llm is task  # no optimizer: the task model writes


def test_usage_is_reported_per_loaded_model_not_per_model_id():
    """Two backends of one model keep two usage entries (one entry taken across both gave
    negative per-unit usage in the benchmark)."""
    task, optimizer = FakeLLM(model_id="qwen"), FakeLLM(model_id="qwen")
    optimizer.backend = "llamacpp"
    models = SharedModels.of(task, optimizer)
    assert models.loaded_llms() == {"qwen": task, "llamacpp:qwen": optimizer}
