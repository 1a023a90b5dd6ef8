"""The Fermi estimator with scripted fakes: loop, failure counting, RoP, save/load."""

import json

import pytest

from personalign.fermi.config import FermiConfig, preset
from personalign.fermi.optimizer import Fermi, derive_seed
from personalign.runtime.prompts import profile_prompt
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.llm.fake import FakeLLM

from tests.fermi.conftest import keyword_task_llm, scripted_optimizer


def _fit(user, embedder, **cfg):
    task, opt = keyword_task_llm(), scripted_optimizer()
    fermi = Fermi(FermiConfig(**{"iterations": 3, "num_candidates": 2, **cfg}), task, opt,
                  embedder)
    fermi.fit(user.opinions[:20], user.profile, user_id=user.user_id)
    return fermi, task, opt


def test_fit_runs_t_iterations_and_counts_failures(user, embedder):
    fermi, task, opt = _fit(user, embedder)
    res = fermi.result
    assert [h["iteration"] for h in res.history] == [0, 1, 2, 3]
    # best memory score never decreases
    best = [h["best_score"] for h in res.history]
    assert best == sorted(best)
    # every reply is accounted for: accepted or one of the failure kinds
    f = res.failures
    dropped = f["cut_off"] + f["empty"] + f["duplicate"] + f["too_long"] + f["unparseable"]
    assert res.counts["optimizer_replies"] == res.counts["accepted"] + dropped
    assert f["no_brackets_fallback"] > 0 and f["unclosed_bracket"] > 0 and f["empty"] > 0
    assert f["cut_off"] == 0  # short unclosed replies ended before the budget: kept
    assert res.counts["prompts_scored"] == 1 + res.counts["accepted"]
    # final pool (the default, memory): the memory's top L, correctness cached on all 20
    assert [p.prompt for p in fermi.pool] == [c.prompt for c in fermi.memory.ranked()]
    assert len(fermi.pool) == fermi.config.memory_size
    assert all(len(p.correctness) == 20 for p in fermi.pool)
    assert len(fermi.train_questions) == 20
    # the optimizer saw the Fermi meta-prompt with failure cases and <INS> demos
    assert "failure cases" in opt.prompts_seen[0] and "<INS>" in opt.prompts_seen[0]
    assert "Age: 30-49" in opt.prompts_seen[0]
    # usage attributed to phases
    assert set(task.usage.by_phase) >= {"fermi/score", "fermi/pool"}
    assert set(opt.usage.by_phase) == {"fermi/optimize"}


def test_a_pool_of_one_prompt_is_not_scored_on_the_demo_part(user, embedder):
    fermi, task, _ = _fit(user, embedder, num_candidates=1, final_pool="last_k")
    assert len(fermi.pool) == 1
    # nothing to choose between: correctness stays on the 16 optimization questions
    assert len(fermi.pool[0].correctness) == len(fermi.train_questions) == 16
    assert "fermi/pool" not in task.usage.by_phase


def test_retries_are_bounded(user, embedder):
    opt = FakeLLM(responder=lambda text, i: "", model_id="silent")
    fermi = Fermi(FermiConfig(iterations=2, num_candidates=3, max_retries=1),
                  keyword_task_llm(), opt, embedder)
    fermi.fit(user.opinions[:20], user.profile)
    r = fermi.result
    assert r.failures["retries"] == 2 and r.failures["short_iterations"] == 2
    assert r.counts["optimizer_replies"] == 2 * 3 * 2 and r.counts["accepted"] == 0
    # no new prompt at all: the pool falls back to the memory (the initial prompt)
    assert [p.prompt for p in fermi.pool] == [profile_prompt(fermi.profile)]


def test_overlong_and_duplicate_prompts_are_dropped(user, embedder):
    replies = iter(["[" + "x" * 50 + "]", "[same text]", "[same text]", "[Same  Text]"] * 10)
    opt = FakeLLM(responder=lambda text, i: next(replies))
    fermi = Fermi(FermiConfig(iterations=1, num_candidates=4, max_retries=0,
                              max_prompt_chars=40), keyword_task_llm(), opt, embedder)
    fermi.fit(user.opinions[:20], user.profile)
    assert fermi.result.failures["too_long"] == 1 and fermi.result.failures["duplicate"] == 2
    assert fermi.result.counts["accepted"] == 1


def test_opro_mode_has_no_failure_cases(user, embedder):
    fermi, _, opt = _fit(user, embedder, mode="opro")
    assert all("failure cases" not in p for p in opt.prompts_seen)
    assert set(opt.usage.by_phase) == {"opro/optimize"}


def test_seeds_derive_from_seed_user_iteration(user, embedder):
    seeds = []

    class Recorder(FakeLLM):
        def _generate(self, prompts, params):
            seeds.append(params.seed)
            return super()._generate(prompts, params)

    opt = Recorder(responder=lambda t, i: f"[a fresh prompt number {len(seeds)}-{i}]")
    Fermi(FermiConfig(iterations=2, num_candidates=2, seed=7), keyword_task_llm(), opt,
          embedder).fit(user.opinions[:20], user.profile, user_id="u9")
    assert seeds == [derive_seed(7, "u9", 1, 0), derive_seed(7, "u9", 2, 0)]


def test_predict_with_and_without_rop(user, embedder):
    fermi, task, _ = _fit(user, embedder, final_pool="memory")
    test = user.opinions[20:30]
    with_rop = fermi.answers(test, use_rop=True)
    without = fermi.answers(test, use_rop=False)
    assert len(with_rop) == len(without) == 10
    assert len({a.prompt_index for a in without}) == 1
    assert all(a.choice in (0, 1, 2) for a in with_rop)
    assert fermi.predict(test) == [a.choice for a in with_rop]


def test_save_load_round_trips_exactly(user, embedder, tmp_path):
    fermi, task, _ = _fit(user, embedder)
    path = fermi.save(tmp_path / "u1.json")
    loaded = Fermi.load(path, task_llm=task, embedder=embedder)
    again = loaded.save(tmp_path / "again.json")
    assert path.read_bytes() == again.read_bytes()
    assert loaded.config == fermi.config and loaded.pool == fermi.pool
    test = user.opinions[20:30]
    assert loaded.predict(test) == fermi.predict(test)


def test_saved_pool_records_the_task_model(user, embedder, tmp_path):
    fermi, task, _ = _fit(user, embedder)
    assert fermi.fit_task_model == {"backend": "fake", "model_id": "fake-task"}
    path = fermi.save(tmp_path / "u1.json")
    data = json.loads(path.read_text())
    assert data["version"] == 3 and data["task_model"] == fermi.fit_task_model
    loaded = Fermi.load(path)  # no task LLM needed to read what it was fit with
    assert loaded.fit_task_model == {"backend": "fake", "model_id": "fake-task"}
    assert loaded.result.to_dict() == fermi.result.to_dict()


def test_load_rejects_unknown_versions(user, embedder, tmp_path):
    fermi, _, _ = _fit(user, embedder)
    data = fermi.to_dict()
    path = tmp_path / "future.json"
    for version in (99, None):
        path.write_text(json.dumps({**data, "version": version}))
        with pytest.raises(DataError) as err:
            Fermi.load(path)
        assert err.value.field == "version" and err.value.path == str(path)
        assert "future.json" in str(err.value)


def test_version_1_files_still_load(user, embedder, tmp_path):
    fermi, task, _ = _fit(user, embedder)
    data = fermi.to_dict()
    # what version 1 wrote: no task model, rating_scale in the config, older fit keys
    old = {k: v for k, v in data.items() if k not in ("task_model", "context_opinions")}
    old["version"] = 1
    old["config"] = {**data["config"], "rating_scale": 4.0, "optimizer_max_tokens": 64}
    for key in ("include_best", "optimizer_token_margin", "context_shots", "context_at_fit"):
        del old["config"][key]
    old["fit"] = {k: v for k, v in data["fit"].items() if k not in ("collapsed", "pool_source")}
    old["fit"]["failures"] = {k: v for k, v in data["fit"]["failures"].items() if k != "cut_off"}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(old))
    loaded = Fermi.load(path, task_llm=task, embedder=embedder)
    assert loaded.fit_task_model is None
    assert loaded.config.optimizer_max_tokens == 64
    assert loaded.result.collapsed is False
    assert loaded.result.pool_source == fermi.config.final_pool  # from its config
    assert loaded.result.failures["cut_off"] == 0
    assert loaded.pool == fermi.pool
    assert loaded.to_dict()["version"] == 3


def test_load_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError):
        Fermi.load(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError):
        Fermi.load(bad)


def test_config_validation_and_presets():
    assert (preset("paper").iterations, preset("paper").num_candidates,
            preset("paper").memory_size) == (10, 4, 5)
    q = preset("quick")
    assert q.preset == "quick" and q.iterations < 10
    cfg = FermiConfig()
    assert cfg.tau == {"choice": 1.0, "tag": 1.0, "rating": 1.0, "title": 0.2}
    assert cfg.reference_entry == "best" and cfg.final_pool == "memory"
    assert FermiConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        FermiConfig(final_pool="everything")
    with pytest.raises(ConfigError):
        FermiConfig(num_candidates=0)
    with pytest.raises(ConfigError):
        FermiConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError):  # removed: nothing read it
        FermiConfig.from_dict({"rating_scale": 4.0})
    with pytest.raises(ConfigError):
        FermiConfig(optimizer_max_tokens=0)
    assert cfg.optimizer_max_tokens is None and not cfg.include_best
    with pytest.raises(ConfigError):
        preset("huge")


def test_unfitted_predict_raises():
    with pytest.raises(ConfigError):
        Fermi().predict([{"question": "q", "options": ["a", "b"]}])


def test_primed_optimizer_replies(user, embedder):
    """Backends that render chat to text get a reply primed with "[" and stopped at "]"."""
    params_seen = []

    class Renderer(FakeLLM):
        def render(self, messages):
            return "USER: " + messages[0]["content"] + "\nASSISTANT: "

        def _generate(self, prompts, params):
            params_seen.append(params)
            assert isinstance(prompts[0], str) and prompts[0].endswith("ASSISTANT: [")
            return super()._generate(prompts, params)

    replies = iter(["Answer like a rural voter", "x" * 700, "Answer like a city voter"] * 5)
    opt = Renderer(responder=lambda t, i: next(replies))
    fermi = Fermi(FermiConfig(iterations=1, num_candidates=3, max_retries=0,
                              optimizer_max_tokens=64, final_pool="last_k"),
                  keyword_task_llm(), opt, embedder)
    fermi.fit(user.opinions[:20], user.profile)
    assert params_seen[0].stop == ("]",)
    # 700 chars ~ 175 fake tokens: past the budget without "]", rejected as cut off
    assert fermi.result.failures["cut_off"] == 1
    assert fermi.result.failures["unclosed_bracket"] == 0
    assert fermi.result.counts["accepted"] == 2
    assert [p.prompt for p in fermi.pool] == ["Answer like a rural voter",
                                              "Answer like a city voter"]
