"""Judge order-consistency logic, refinement, and the synthetic pipeline with FakeLLM."""

import json
import math
import re

import pytest

from personalign.fspo.data.card import write_card
from personalign.fspo.data.episodes import build_episodes
from personalign.fspo.data.judge import PairJob, PairwiseJudge, binary_entropy, decide, win_rate
from personalign.fspo.data.pipeline import SynthConfig, SyntheticPipeline, plan_budget
from personalign.fspo.data.refine import RefineConfig, clean_trait, refine_user
from personalign.runtime.data.preferences import load_preferences
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.llm.fake import FakeLLM


class FakeEmbedder:
    model_name = "fake"

    def embed(self, texts):
        import numpy as np

        v = np.array([[len(t), t.count("e") + 1.0, 1.0] for t in texts])
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_decide_both_orders():
    assert decide(2.0, -1.0) == 0      # x as A wins, x as B wins
    assert decide(-2.0, 1.0) == 1
    assert decide(2.0, 1.0) is None    # always "A": position bias, dropped
    assert decide(-1.0, -1.0) is None
    # Calibration removes a constant bias toward A.
    assert decide(3.0, 1.0, bias=2.0) == 0
    assert decide(1.0, 3.0, bias=2.0) == 1
    assert binary_entropy(0.5) == pytest.approx(math.log(2))
    assert binary_entropy(1.0) == 0.0


def _responses(full):
    a = full.split("Response A:\n")[1].split("\n\nResponse B:")[0]
    b = full.split("Response B:\n")[1].split("\n\nScoring guidelines:")[0]
    return a, b


def _keyword_chooser(item):
    """Prefers the response mentioning the word after 'User description: '."""
    full = item.prefix + item.prompt
    word = re.search(r"User description: (\w+)", full).group(1)
    a, b = _responses(full)
    if (word in a) == (word in b):
        return 0  # undecided: always "A" (order-inconsistent)
    return 0 if word in a else 1


def test_judge_asks_both_orders_and_drops_inconsistent():
    llm = FakeLLM(chooser=_keyword_chooser)
    judge = PairwiseJudge(llm)
    jobs = [PairJob("q", "apple pie", "banana"), PairJob("q", "banana", "apple pie"),
            PairJob("q", "kiwi", "melon")]
    out = judge.judge("apple lover", "", jobs)
    assert [j.label for j in out] == [0, 1, None]
    assert out[0].p_x > 0.5 and out[1].p_x < 0.5 and out[2].p_x == pytest.approx(0.5)
    xy, yx = PairwiseJudge.items("D", "G", jobs[0])
    assert "Remember who the user is: D\n" in xy.prompt and xy.prompt.endswith("Answer:")
    assert "Response A:\napple pie" in xy.prompt and "Response A:\nbanana" in yx.prompt
    # The user's description is the shared prefix; the pair and the guidelines follow it.
    assert xy.prefix == yx.prefix == "User description: D\n\n"
    assert "Scoring guidelines: G\n" in xy.prompt
    assert xy.options == ("A", "B")
    with pytest.raises(ConfigError):
        PairwiseJudge(llm, method="vote")


def test_judge_generate_method_parses_answers():
    llm = FakeLLM(responder=lambda text, i: "B" if "Response A:\nkiwi" in text else "A")
    out = PairwiseJudge(llm, method="generate").judge("d", "g", [PairJob("q", "kiwi", "fig")])
    assert out[0].label == 1  # B when kiwi is A, A when fig is A: fig preferred both times


def test_win_rate_judges_both_orders_with_the_users_description():
    def prefers_good(item):
        a, _ = _responses(item.prefix + item.prompt)
        assert "User description: likes good things" in item.prefix
        return 0 if "good" in a else 1

    items = [{"question": "q", "description": "likes good things", "response": "good one",
              "baseline": "bad"},
             {"question": "q", "description": "likes good things", "response": "meh",
              "baseline": "good"}]
    wr = win_rate(FakeLLM(chooser=prefers_good, model_id="judge-x"), items)
    assert (wr.scores, wr.mean, wr.n, wr.judge) == ([1.0, 0.0], 0.5, 2, "judge-x")
    assert wr.as_dict() == {"win_rate": 0.5, "se": pytest.approx(0.5), "n": 2, "ties": 0,
                            "judge_consistent": 1.0, "consistency": "calibrated",
                            "judge": "judge-x"}
    # A judge that always says (A) is order-inconsistent: every item is a tie.
    always_a = win_rate(FakeLLM(chooser=lambda item: 0), items)
    assert always_a.scores == [0.5, 0.5] and always_a.se == 0.0
    assert always_a.ties == 2 and always_a.consistent == 0.0
    # A judge that sees "good" only when it is shown first, else says "A": the first item
    # decided, the second order-inconsistent (a tie), and that is what is reported.
    def leans_a(item):
        return 0 if "good" in _responses(item.prefix + item.prompt)[0] or "meh" in \
            item.prompt else 1

    strict = win_rate(FakeLLM(chooser=leans_a), items, consistency="strict")
    assert strict.scores == [1.0, 0.5] and strict.consistent == 0.5 and strict.ties == 1
    # calibrated: FakeLLM's margins are all equal, so removing its bias (a quarter of one
    # margin toward "A") moves no verdict
    calibrated = win_rate(FakeLLM(chooser=leans_a), items, consistency="calibrated")
    assert calibrated.scores == [1.0, 0.5] and calibrated.consistent == 0.5
    assert calibrated.as_dict()["consistency"] == "calibrated"
    with pytest.raises(DataError):
        win_rate(FakeLLM(), [])


def _description_chooser(item):
    """Prefers the response that shares a word with the whole user description."""
    full = item.prefix + item.prompt
    words = set(re.search(r"User description: (.*)", full).group(1).split())
    a, b = (bool(words & set(r.split())) for r in _responses(full))
    if a == b:
        return 0  # undecided: always "A" (order-inconsistent)
    return 0 if a else 1


def test_refinement_appends_trait_and_relabels():
    llm = FakeLLM(chooser=_description_chooser,
                  responder=lambda text, i: "kiwi answers.\nextra")
    judge = PairwiseJudge(llm)
    jobs = [PairJob("q", "kiwi", "melon")]
    before = judge.judge("apple lover", "", jobs)
    assert before[0].label is None
    res = refine_user(llm, judge, "apple lover", "", jobs, before,
                      RefineConfig(rounds=2, max_traits=1))
    assert res.traits == ["They prefer kiwi answers."]
    assert res.description == "apple lover They prefer kiwi answers."
    # Re-judged with the trait, the pair is decided (kiwi, both orders); a second round
    # proposes the same trait again, adds nothing and stops.
    assert res.judgments[0].label == 0 and res.rounds_run == 1
    assert clean_trait('"They like cats. And dogs"') == "They like cats."


LEVEL_KEYS = {"a child": "young child", "a preteen": "middle-school", "a teenager": "high-school",
              "a young adult": "college", "an expert": "for an expert"}


def _level_chooser(item):
    """Prefers the response written for the user's education level."""
    full = item.prefix + item.prompt
    key = next(v for k, v in LEVEL_KEYS.items() if f"The user is {k}" in full)
    a, b = _responses(full)
    if (key in a) == (key in b):
        return 0
    return 0 if key in a else 1


def _fake_pipeline_llm():
    def responder(text, i):
        if "question a curious person" in text:
            topic = text.split("explained")[0].split("have ")[-1]
            return f"How does {topic.strip()} work?"
        if text.endswith("They prefer"):
            return "answers about child things."
        return "Answer: " + text.split("\n\n")[0][:80]
    return FakeLLM(responder=responder, chooser=_level_chooser)


def test_pipeline_end_to_end_fake(tmp_path):
    # strict: the labels below are worked out with the plain two-order rule
    cfg = SynthConfig(domain="elix", users=10, questions=6, pairs_per_question=3,
                      generators=["fake"], judge_model="fake", consistency="strict",
                      refine=RefineConfig(rounds=1, max_traits=1))
    llm = _fake_pipeline_llm()
    budgets = []
    summary = SyntheticPipeline(cfg, llms={"fake": llm}, progress=False).run(
        tmp_path, on_budget=budgets.append)
    assert budgets[0]["total"] == plan_budget(cfg)["total"]
    assert summary["users"] == 10 and summary["judged_pairs"] == 10 * 6 * 3
    pairs = load_preferences(tmp_path / "pairs.jsonl")
    assert pairs and all(p.chosen != p.rejected for p in pairs)
    assert len({p.user_id for p in pairs}) >= 2
    assert {p.meta["difficulty"] for p in pairs} <= {"easy", "hard"}
    card = write_card(tmp_path, embedder=FakeEmbedder())
    assert card["users"] == 10 and card["pairs_judged"] == 180
    # The kept pairs are exactly those the fake judge can decide, worked out from the
    # responses' and users' levels (not from the pipeline's labels): one response written
    # for the user's level, which is the one chosen.
    responses = {r["rid"]: r for line in (tmp_path / "responses.jsonl").read_text().splitlines()
                 for r in json.loads(line)["responses"]}
    users = {u["user_id"]: u for u in map(json.loads,
                                          (tmp_path / "users.jsonl").read_text().splitlines())}
    decidable = set()
    for row in map(json.loads, (tmp_path / "pairs_all.jsonl").read_text().splitlines()):
        level = users[row["user_id"]]["attributes"]["level"]
        at = [rid for rid in (row["x"], row["y"]) if responses[rid]["meta"]["level"] == level]
        if len(at) == 1:
            other = row["y"] if at[0] == row["x"] else row["x"]
            decidable.add((row["user_id"], at[0], other))
    kept = {(p.user_id, p.meta["chosen_rid"], p.meta["rejected_rid"]) for p in pairs}
    assert kept == decidable and card["pairs_kept"] == len(decidable)
    # The fake judge keys on the user's level, which the added traits leave alone: pairs
    # with both or neither response at the level are dropped before and after refinement.
    dropped = card["pairs_judged"] - card["pairs_kept"]
    assert 0 < dropped < card["pairs_judged"]
    assert card["dropped_order_inconsistent"] == {"before_refinement": dropped,
                                                  "after_refinement": dropped}
    # FakeLLM scores its choice 0.7: a kept pair has p_x 0.7 or 0.3, a dropped one 0.5.
    entropy = (dropped * math.log(2) + card["pairs_kept"] * binary_entropy(0.7)) / 180
    assert card["label_entropy_nats"]["before_refinement"] == pytest.approx(entropy, abs=1e-4)
    assert card["diversity"]["mean_pairwise_similarity"] is not None
    assert (tmp_path / "card.md").exists()
    # The fake judge prefers the user's own level: every kept easy pair agrees.
    assert card["elix_level_agreement"]["after_refinement"] == 1.0
    # Resume: nothing to redo, no new calls.
    calls = llm.usage.calls
    SyntheticPipeline(cfg, llms={"fake": llm}, progress=False).run(tmp_path)
    assert llm.usage.calls == calls
    # Another configuration in the same folder is refused.
    with pytest.raises(ConfigError, match="changed: config"):
        SyntheticPipeline(SynthConfig(users=5, generators=["fake"], judge_model="fake"),
                          llms={"fake": llm}).run(tmp_path)
    eps = build_episodes(pairs, n_shots=2, passes=1, seed=0)
    assert eps and all(e.n_shots == 2 for e in eps)


def test_pipeline_resumes_after_partial_labels(tmp_path):
    cfg = SynthConfig(domain="elix", users=5, questions=3, pairs_per_question=1,
                      generators=["fake"], judge_model="fake")
    llm = _fake_pipeline_llm()
    SyntheticPipeline(cfg, llms={"fake": llm}, progress=False).run(tmp_path)
    first = (tmp_path / "pairs.jsonl").read_text()
    victim = sorted((tmp_path / "labels").glob("*.json"))[0]
    victim.unlink()
    for name in ["responses.jsonl", "labels/r0.jsonl", "labels/traits_r0.jsonl"]:
        lines = (tmp_path / name).read_text().splitlines()
        (tmp_path / name).write_text("\n".join(lines[:-1]) + "\n")
    SyntheticPipeline(cfg, llms={"fake": llm}, progress=False).run(tmp_path)
    assert (tmp_path / "pairs.jsonl").read_text() == first
    usage = json.loads((tmp_path / "usage.json").read_text())
    assert len(usage["runs"]) == 2


def test_budget_refuses_over_max_calls(tmp_path):
    cfg = SynthConfig(users=20, questions=20, generators=["fake"], judge_model="fake")
    b = plan_budget(cfg)
    # 20 questions x (5 steered responses + 1 listing of views)
    assert b["responses"] == 120 and b["judge"] == 20 * 40 * 2
    with pytest.raises(ConfigError, match="max-calls"):
        SyntheticPipeline(cfg, llms={"fake": FakeLLM()}).run(tmp_path, max_calls=10)
    assert not (tmp_path / "users.jsonl").exists()


def test_pipeline_refuses_changed_files_and_force_recomputes(tmp_path):
    questions = tmp_path / "questions.txt"
    questions.write_text("Why is the sky blue?\nHow do magnets work?\n")
    cfg = SynthConfig(domain="elix", users=5, questions_file=str(questions),
                      pairs_per_question=1, generators=["fake"], judge_model="fake",
                      refine=RefineConfig(rounds=0))
    llm = _fake_pipeline_llm()
    out = tmp_path / "out"
    SyntheticPipeline(cfg, llms={"fake": llm}, progress=False).run(out)
    assert json.loads((out / "run.json").read_text())["kind"] == "fspo-data synth"
    # Unchanged inputs: the rerun resumes and calls nothing.
    calls = llm.usage.calls
    SyntheticPipeline(cfg, llms={"fake": llm}, progress=False).run(out)
    assert llm.usage.calls == calls
    # The same path with other contents is another input.
    questions.write_text("Why is the sky blue?\nHow do magnets work?\nWhat is rain?\n")
    with pytest.raises(ConfigError, match="changed: questions_file"):
        SyntheticPipeline(cfg, llms={"fake": llm}, progress=False).run(out)
    assert len((out / "questions.jsonl").read_text().splitlines()) == 2
    summary = SyntheticPipeline(cfg, llms={"fake": llm}, progress=False).run(out, force=True)
    assert len((out / "questions.jsonl").read_text().splitlines()) == 3
    assert summary["judged_pairs"] == 5 * 3
    assert len(json.loads((out / "usage.json").read_text())["runs"]) == 1
    # Force only recomputes what changed: with the same inputs it resumes.
    calls = llm.usage.calls
    SyntheticPipeline(cfg, llms={"fake": llm}, progress=False).run(out, force=True)
    assert llm.usage.calls == calls


def test_views_follow_persona_steering():
    """Each steered response keeps its persona's instruction and also takes one listed view."""
    from personalign.fspo.data.synthetic import GeneratorSpec, Question, Steer, generate_responses

    def responder(text, i):
        if "points of view" in text:
            return "1. Economic cost\n2. Moral duty\n- Practical effort"
        return f"reply to: {text}"

    llm = FakeLLM(responder=responder)
    steers = [Steer("child", "Explain it to a five-year-old.", {"level": "child"}),
              Steer("expert", "Explain it to a physics professor.", {"level": "expert"})]
    out = generate_responses(Question("q1", "Why is the sky blue?"), steers,
                             [GeneratorSpec(llm)], seed=3, views=3)
    views = {"Economic cost", "Moral duty", "Practical effort"}
    assert [r.meta["level"] for r in out] == ["child", "expert"]
    for r, steer in zip(out, steers):
        assert r.meta["view"] in views
        assert steer.instruction in r.text and f"point of view: {r.meta['view']}" in r.text
    # Without views the steer alone decides the response.
    plain = generate_responses(Question("q1", "Why is the sky blue?"), steers,
                               [GeneratorSpec(llm)], seed=3, views=0)
    assert all("view" not in r.meta and "point of view" not in r.text for r in plain)
