"""The persistent LLM-call cache: hits are counted, results are identical, it works across
processes, and cache=False / PERSONALIGN_NO_CACHE turn it off."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from personalign.runtime.llm.cache import CallCache, cache_key
from personalign.runtime.llm.fake import FakeLLM
from personalign.runtime.llm.types import ChoiceItem, SamplingParams

ITEMS = [ChoiceItem(f"Question {i}?\n(A) yes\n(B) no\n(C) maybe\nAnswer:", ("yes", "no", "maybe"),
                    prefix="Persona: a test user.\n") for i in range(6)]
PROMPTS = ["Say hello.", [{"role": "user", "content": "Say goodbye."}]]


def _responder(text: str, i: int) -> str:
    return f"reply to {text[-12:]!r} #{i}"


def _llm(cache) -> FakeLLM:
    return FakeLLM(responder=_responder, cache=cache)


def test_hits_are_counted_and_results_identical(tmp_path):
    cache = CallCache(tmp_path / "c")
    first = _llm(cache)
    gen1 = first.generate(PROMPTS, SamplingParams(n=2, temperature=0.7, seed=1))
    sc1 = first.score_choices(ITEMS)
    ll1 = first.loglikelihood([("ctx", " cont")])
    assert first.usage.cache_hits == 0 and first.usage.calls == 2 + 6 + 1

    second = _llm(cache)  # a fresh object: everything must come from the cache
    assert second.generate(PROMPTS, SamplingParams(n=2, temperature=0.7, seed=1)) == gen1
    sc2 = second.score_choices(ITEMS)
    assert [(r.logprobs, r.choice) for r in sc2] == [(r.logprobs, r.choice) for r in sc1]
    assert second.loglikelihood([("ctx", " cont")]) == ll1
    assert second.usage.calls == 0
    assert second.usage.cache_hits == 2 + 6 + 1


def test_key_covers_params_and_model(tmp_path):
    cache = CallCache(tmp_path / "c")
    llm = _llm(cache)
    llm.generate(PROMPTS[:1], SamplingParams(seed=1))
    llm.generate(PROMPTS[:1], SamplingParams(seed=2))          # other seed: a miss
    llm.generate(PROMPTS[:1], SamplingParams(seed=1, max_tokens=5))  # other params: a miss
    other = FakeLLM(responder=_responder, cache=cache, model_id="other")
    other.generate(PROMPTS[:1], SamplingParams(seed=1))         # other model: a miss
    assert llm.usage.cache_hits == 0 and other.usage.cache_hits == 0
    llm.generate(PROMPTS[:1], SamplingParams(seed=1))
    assert llm.usage.cache_hits == 1
    assert cache_key(("fake", "m"), "generate", "p", SamplingParams()) == \
        cache_key(("fake", "m"), "generate", "p", SamplingParams())


def test_hits_attributed_to_phase(tmp_path):
    llm = _llm(CallCache(tmp_path / "c"))
    llm.score_choices(ITEMS)
    with llm.phase("eval"):
        llm.score_choices(ITEMS)
    assert llm.usage.by_phase["eval"].cache_hits == len(ITEMS)
    assert llm.usage.by_phase["eval"].calls == 0


def test_disabled(tmp_path, monkeypatch):
    llm = _llm(cache=False)
    assert llm.cache is None
    llm.generate(PROMPTS)
    llm.generate(PROMPTS)
    assert llm.usage.cache_hits == 0 and llm.usage.calls == 4
    # cache=True honours PERSONALIGN_NO_CACHE (and never touches the default home then).
    monkeypatch.setenv("PERSONALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PERSONALIGN_NO_CACHE", "1")
    assert _llm(cache=True).cache is None
    monkeypatch.delenv("PERSONALIGN_NO_CACHE")
    on = _llm(cache=True)
    assert on.cache is not None and Path(on.cache.path).is_relative_to(tmp_path / "home")


def _worker(path: str, start: int, queue) -> None:
    llm = _llm(CallCache(path))
    items = [ChoiceItem(f"Q{i}?\n(A) a\n(B) b\nAnswer:", ("a", "b")) for i in range(start,
                                                                             start + 20)]
    results = llm.score_choices(items)
    queue.put((start, llm.usage.calls, llm.usage.cache_hits,
               [(r.logprobs, r.choice) for r in results]))


def test_two_processes_share_the_cache(tmp_path):
    ctx = mp.get_context("spawn")  # a clean interpreter, as a second CLI run would be
    queue = ctx.Queue()
    path = str(tmp_path / "shared")
    # Two processes at once with overlapping work (items 10-19 are in both).
    procs = [ctx.Process(target=_worker, args=(path, s, queue)) for s in (0, 10)]
    for p in procs:
        p.start()
    got = {}
    for _ in procs:
        start, calls, hits, results = queue.get(timeout=120)
        got[start] = (calls, hits, results)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(calls + hits for calls, hits, _ in got.values()) == 40
    # Afterwards a third run finds all 30 distinct items, with the same results.
    queue2 = ctx.Queue()
    p = ctx.Process(target=_worker, args=(path, 0, queue2))
    p.start()
    _, calls, hits, results = queue2.get(timeout=120)
    p.join(timeout=60)
    assert (calls, hits) == (0, 20)
    assert results == got[0][2]
    assert len(CallCache(path)) == 30


def test_phase_time_excludes_nested_phases():
    import time

    import pytest

    llm = FakeLLM(cache=False)
    with llm.phase("outer"):
        time.sleep(0.02)
        with llm.phase("inner"):
            time.sleep(0.05)
    phases = llm.usage.by_phase
    assert 0.05 <= phases["inner"].seconds < phases["inner"].seconds + phases["outer"].seconds
    assert 0.02 <= phases["outer"].seconds < 0.05
    assert llm.usage.seconds == pytest.approx(phases["inner"].seconds + phases["outer"].seconds)
    assert llm.usage.as_dict()["by_phase"]["inner"]["seconds"] >= 0.05


def test_generate_one_reports_the_same_usage_on_a_cache_hit(tmp_path):
    llm = FakeLLM(responder=_responder, cache=CallCache(tmp_path / "c"))
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi" * 50}]
    first = llm.generate_one(prompt, SamplingParams(max_tokens=8))
    second = llm.generate_one(prompt, SamplingParams(max_tokens=8))
    assert first == second and first[1] > 20
    assert llm.usage.cache_hits == 1 and llm.usage.calls == 1
