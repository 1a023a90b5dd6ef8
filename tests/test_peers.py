"""The DSPy peers (issue 26): each fitted per user through the real loopback OpenAI-compatible
endpoint on the run's own LLM objects, its tokens counted there, its unparsed answers counted,
its budget at least Fermi's calls; in the benchmark's one report, resumed like every method.

The fakes (tests/peer_fakes.py) answer DSPy's chat format as a model would; the real SmolLM2
answers one peer end to end."""

import json
import math
import subprocess
import sys

import httpx
import pytest

from personalign.bench.runner import BenchConfig, run_benchmark
from personalign.fermi.config import preset
from personalign.methods import MethodSettings, build, load, method_class
from personalign.methods.peers import DSPyBootstrap, DSPyMIPROv2, Loopback
from personalign.runtime.budget import Limits
from personalign.runtime.data.records import User
from personalign.runtime.data.splits import optimization_split
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.personalizer import SharedModels

from tests.fermi.conftest import BagEmbedder, keyword_task_llm, make_user, scripted_optimizer
from tests.peer_fakes import garbled, peer_models

fermi_fit_calls = method_class("fermi").fit_calls

pytest.importorskip("dspy", reason="the DSPy peers need the extra personalign[peers]")

PEERS = ("dspy-gepa", "dspy-miprov2", "dspy-bootstrap")


def _split(n_train: int = 20, n_test: int = 10):
    user = make_user("u1", n_train + n_test)
    return (User(user.user_id, dict(user.profile), user.opinions[:n_train]),
            list(user.opinions[n_train:]))


def _number(q) -> int:
    return int(q.question.rsplit("number ", 1)[1].rstrip("?"))


def test_fermi_calls_bound_what_fermi_spends():
    """The budget rule's bound: the formula at each preset, and at or above what Fermi's fit
    really spends, with an optimizer whose every reply is empty (each iteration retried to the
    limit) and with one that mostly succeeds (every candidate scored)."""
    # the memory pool's L prompts are each scored on the 4 demonstrations
    assert [fermi_fit_calls(preset(p), 20) for p in ("tiny", "quick", "paper")] == \
        [43, 106, 706]
    train, _ = _split()
    for p in ("tiny", "quick"):
        cfg = preset(p)
        for opt in (FakeLLM(responder=lambda text, i: "[]", model_id="empty"),
                    scripted_optimizer()):
            task = keyword_task_llm()
            build("fermi", SharedModels.of(task, opt, BagEmbedder()),
                  MethodSettings(preset=p)).fit(train)
            assert 0 < task.usage.calls + opt.usage.calls <= fermi_fit_calls(cfg, 20)
            if opt.model_id == "empty":
                assert opt.usage.calls == cfg.iterations * (1 + cfg.max_retries)
            else:
                assert task.usage.calls >= (1 + cfg.iterations) * 16  # rewrites were scored


@pytest.mark.parametrize("name", ["tiny", "quick", "paper"])
def test_each_peer_gets_at_least_fermis_calls(name):
    settings = MethodSettings(preset=name)
    budget = fermi_fit_calls(preset(name), 20)
    mipro = build("dspy-miprov2", SharedModels(), settings)
    assert isinstance(mipro, DSPyMIPROv2) and mipro.budget(20) == budget
    assert 20 * (1 + mipro.trials(budget, 20)) >= budget  # the default program, then trials
    cfg = preset(name)
    assert mipro.candidates() == max(2, cfg.iterations * cfg.num_candidates + 1)
    boot = build("dspy-bootstrap", SharedModels(), settings)
    assert isinstance(boot, DSPyBootstrap)
    _, val = optimization_split(list(range(20)), cfg.optimization_fraction)
    assert len(val) == 4
    assert len(val) * (3 + boot.candidate_programs(budget, len(val))) >= budget
    for spec in PEERS:  # the projection says the same (no DSPy import needed)
        train, test = _split()
        phases = method_class(spec).project(train.opinions, test, settings)
        assert phases[f"{spec}/score"].calls >= budget
        assert phases[f"{spec}/predict"].calls == len(test)
        assert (f"{spec}/optimize" in phases) == (spec != "dspy-bootstrap")


def _endpoints(monkeypatch) -> list[Loopback]:
    """Every loopback endpoint started from now on."""
    started, enter = [], Loopback.__enter__

    def recording(self):
        started.append(self)
        return enter(self)

    monkeypatch.setattr(Loopback, "__enter__", recording)
    return started


def _serving(url: str) -> bool:
    try:
        return httpx.get(f"{url}/models", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("spec", PEERS)
def test_peer_end_to_end_through_the_loopback_endpoint(spec, tmp_path, monkeypatch):
    models = peer_models()
    task, opt = models.task_llm, models.optimizer_llm
    train, test = _split()
    endpoints = _endpoints(monkeypatch)
    method = build(spec, models, MethodSettings(preset="tiny")).fit(train)
    answers = method.predict(test)
    # the fit and the prediction each served the models on loopback, and stopped serving
    assert len(endpoints) == 2 and all(e.url.startswith("http://127.0.0.1:") for e in endpoints)
    assert not any(_serving(e.url) for e in endpoints)
    # every answer is an option, or (DSPy could not parse the reply) a uniform guess
    expected_unparsed = [garbled(_number(q)) for q in test]
    assert [a.choice is None for a in answers] == expected_unparsed
    for a, q in zip(answers, test):
        assert len(a.logprobs) == len(q.options)
        assert math.isclose(math.log(sum(math.exp(x) for x in a.logprobs)), 0.0, abs_tol=1e-9)
        if a.choice is None:
            assert a.correctness(q.answer) == pytest.approx(1 / len(q.options))
    report = method.fit_report()
    # unparsed answers are counted: the test's exactly, the fit's as DSPy met them
    assert report["failures"]["unparsed_answers"] == sum(expected_unparsed) > 0
    assert report["counts"]["answers"] == len(test)
    assert 0 < report["failures"]["fit_unparsed_answers"] < report["counts"]["fit_answers"]
    assert report["failures"]["chat_format_errors"] >= sum(expected_unparsed)
    # every token DSPy spent went through the run's own LLM objects, per phase
    phases = task.usage.by_phase
    spent = sum(u.prompt_tokens + u.completion_tokens
                for llm in (task, opt) for u in llm.usage.by_phase.values())
    assert report["counts"]["requests"] == task.usage.calls + opt.usage.calls  # no cache here
    assert report["counts"]["requested_tokens"] == spent
    budget = fermi_fit_calls(preset("tiny"), 20)
    assert phases[f"{spec}/score"].calls >= report["counts"]["budget_calls"] == budget
    assert phases[f"{spec}/score"].prompt_tokens > 0
    # one call per question, one more (the JSON fallback) per unparsed reply
    assert phases[f"{spec}/predict"].calls == len(test) + sum(expected_unparsed)
    if spec == "dspy-bootstrap":
        assert opt.usage.calls == 0
    else:
        assert opt.usage.by_phase[f"{spec}/optimize"].calls > 0
        assert GOOD in method.instruction  # the optimizer's instruction won on the metric
        assert method.instruction != report["initial_instruction"]
    assert report["initial_instruction"].startswith("A person can be described as follows: ")
    # saved and loaded: the same answers
    again = load(method.save(tmp_path / "peer.json"), models).predict(test)
    assert [a.choice for a in again] == [a.choice for a in answers]


GOOD = "careful"


def test_requests_answered_by_the_call_cache_still_count_their_tokens(tmp_path):
    """A second fit on the same models asks the same: the call cache answers all of it (no
    new call), and the peer still reports every request and its tokens."""
    from personalign.runtime.llm.cache import CallCache

    models = peer_models(cache=CallCache(tmp_path / "calls"))
    train, _ = _split()
    first = build("dspy-gepa", models, MethodSettings(preset="tiny")).fit(train).fit_report()
    calls = models.task_llm.usage.calls + models.optimizer_llm.usage.calls
    second = build("dspy-gepa", models, MethodSettings(preset="tiny")).fit(train).fit_report()
    assert models.task_llm.usage.calls + models.optimizer_llm.usage.calls == calls
    assert models.task_llm.usage.cache_hits >= second["counts"]["fit_answers"] > 0
    for key in ("requests", "requested_tokens"):
        assert second["counts"][key] == first["counts"][key] > 0


def test_peers_in_the_benchmark_report_and_resume(tmp_path):
    users = [make_user("u0", 30)]
    methods = ["vanilla", "fermi", *PEERS]
    cfg = BenchConfig(data="synthetic", out=str(tmp_path / "run"), users=1, methods=methods,
                      settings=MethodSettings(preset="tiny"), n_test=10)
    res = run_benchmark(cfg, users, models=peer_models(), progress=False)
    assert len(res.records) == 1
    rows = [json.loads(x) for x in (res.out / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == set(methods)
    per_method = {r["method"]: r for r in res.summary["per_method"]}
    for spec in PEERS:
        unparsed = sum(r["choice"] is None for r in rows if r["method"] == spec)
        assert per_method[spec]["unparsed_answers"] == unparsed > 0
        assert per_method[spec]["answers"] == 10
    readme = (res.out / "README.md").read_text()
    assert "Unparsed" in res.summary["per_method_md"]
    assert "## Cost per user by method" in readme and "tokens / Fermi's" in readme
    assert "tokens with cache hits" in readme
    for rule in ("max_metric_calls = B", "num_trials = ceil(B / |val|) - 1",
                 "num_candidate_programs = ceil(B / |val|) - 3"):
        assert rule in readme  # the budget rules, in the report's notes
    usage = json.loads((res.out / "usage.json").read_text())
    budget = fermi_fit_calls(preset("tiny"), 20)
    assert usage["optimizer_counts"]["dspy-gepa"]["budget_calls"] == budget
    assert usage["optimizer_failures"]["dspy-miprov2"]["unparsed_answers"] > 0
    # the unit keeps what the peer found (its prompts are in the run folder)
    unit = json.loads(next((res.out / "units").rglob("*dspy-gepa*")).read_text())
    assert GOOD in json.dumps(unit)
    # a rerun recomputes nothing and reports the same
    again = run_benchmark(cfg, users, models=peer_models(), progress=False)
    meta = json.loads((again.out / "config.json").read_text())
    assert meta["units_run_this_session"] == 0
    assert again.summary["per_method_md"] == res.summary["per_method_md"]


@pytest.mark.parametrize("spec", ["dspy-gepa", "dspy-miprov2"])
def test_an_optimizer_model_dspy_cannot_read_leaves_the_initial_prompt(spec):
    """Replies of the optimizer model in no format DSPy reads: GEPA skips the proposal,
    MIPROv2's proposer raises and the fit keeps the initial program; either way the fit is
    reported collapsed with the unreadable replies counted, and it still predicts."""
    models = peer_models()
    models.optimizer_llm.responder = lambda text, i: "Sure! Here is a better prompt for you."
    train, test = _split(10, 4)
    method = build(spec, models, MethodSettings(preset="tiny")).fit(train)
    report = method.fit_report()
    assert method.instruction == report["initial_instruction"] and report["collapsed"]
    assert report["failures"]["optimizer_unparsed"] > 0
    assert report["failures"]["optimizer_errors"] == (spec == "dspy-miprov2")
    assert len(method.predict(test)) == 4


def test_a_limit_reached_inside_dspy_stops_the_unit(tmp_path):
    """The run's limits reach the calls DSPy makes through the endpoint: the unit is stopped,
    not saved, and a rerun with a higher limit finishes it."""
    users = [make_user("u0", 30)]
    cfg = BenchConfig(data="synthetic", out=str(tmp_path / "run"), users=1,
                      methods=["dspy-gepa"], settings=MethodSettings(preset="tiny"), n_test=10,
                      limits=Limits(user_calls=15))
    res = run_benchmark(cfg, users, models=peer_models(), progress=False)
    assert res.stopped == {"u0": "user_calls 15 reached"} and not res.records
    cfg.limits = Limits()
    assert len(run_benchmark(cfg, users, models=peer_models(), progress=False).records) == 1


def test_the_core_install_never_imports_dspy():
    code = ("import sys; from personalign.cli.main import main; "
            "from personalign.methods import MethodSettings, build, method_names; "
            "from personalign.bench.projection import project_run; "
            "from personalign.runtime.personalizer import SharedModels; "
            "names = method_names(); build('dspy-gepa', SharedModels(), MethodSettings()); "
            "assert 'dspy-gepa' in names and 'dspy' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_the_extra_a_peer_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "dspy", None)  # import dspy fails as if not installed
    train, _ = _split(6, 2)
    with pytest.raises(ConfigError, match=r"personalign\[peers\]"):
        build("dspy-gepa", peer_models(), MethodSettings(preset="tiny")).fit(train)
    with pytest.raises(ConfigError, match="no argument"):
        build("dspy-gepa:x", peer_models())


@pytest.mark.real_model
def test_gepa_on_smollm_through_the_endpoint(smollm):
    """SmolLM2-135M as task and reflection model: DSPy's chat adapter reads its replies or
    counts them unparsed (this model rarely writes DSPy's field headers), and the model's own
    usage counters saw every call DSPy made."""
    models = SharedModels.of(smollm, scoring="letter")
    before = smollm.usage.calls
    train, test = _split(3, 2)
    method = build("dspy-gepa", models, MethodSettings(preset="tiny"))
    method.task_max_tokens, method.optimizer_max_tokens = 16, 48
    answers = method.fit(train).predict(test)
    report = method.fit_report()
    assert len(answers) == 2
    assert report["failures"]["unparsed_answers"] == sum(a.choice is None for a in answers)
    assert report["counts"]["answers"] == 2
    assert report["counts"]["budget_calls"] == fermi_fit_calls(preset("tiny"), 3)
    phases = smollm.usage.by_phase
    assert phases["dspy-gepa/score"].calls >= 3 and phases["dspy-gepa/predict"].calls >= 2
    assert phases["dspy-gepa/score"].prompt_tokens > 100 * phases["dspy-gepa/score"].calls
    assert smollm.usage.calls - before == sum(
        phases[p].calls for p in ("dspy-gepa/score", "dspy-gepa/optimize", "dspy-gepa/predict")
        if p in phases)
