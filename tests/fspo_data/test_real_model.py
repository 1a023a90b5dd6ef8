"""End-to-end generation of a tiny dataset with the embedded SmolLM2 (real model, CPU).

Its wall time is measured by ``benchmarks/fspo_data_bench.py``, not asserted here."""

import json
import math

import pytest

from personalign.fspo.data.card import write_card
from personalign.fspo.data.pipeline import SynthConfig, SyntheticPipeline
from personalign.fspo.data.refine import RefineConfig
from personalign.runtime.data.preferences import load_preferences


def tiny_reviews_config(questions_file: str) -> SynthConfig:
    return SynthConfig(domain="reviews", users=2, questions_file=questions_file,
                       responses_per_question=2, pairs_per_question=1, max_tokens=16,
                       generators=["smollm2-135m-instruct"],
                       judge_model="smollm2-135m-instruct", consistency="calibrated",
                       refine=RefineConfig(rounds=1, max_traits=1, max_tokens=12))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.mark.real_model
def test_tiny_reviews_dataset_with_smollm2(tmp_path, smollm, embedder):
    questions = tmp_path / "questions.txt"
    questions.write_text("Write a review of the movie 'Ocean Lights'.\n"
                         "Write a review of the movie 'The Last Train'.\n")
    summary = SyntheticPipeline(tiny_reviews_config(str(questions)),
                                llms={"smollm2-135m-instruct": smollm},
                                progress=False).run(tmp_path / "out")
    assert summary["users"] == 2 and summary["judged_pairs"] == 4
    card = write_card(tmp_path / "out", embedder=embedder)
    assert card["responses"] == 4
    # Each user's labels recomputed from the judge's stored log-odds by the calibrated rule
    # (the user's mean log-odds of "A" is the position bias; x wins when both orders favour it
    # after subtracting it): the kept pairs are exactly those so decided, each the way decided.
    decided = {}
    for path in sorted((tmp_path / "out" / "labels").glob("*.json")):
        rec = json.loads(path.read_text())
        after = [p["after"] for p in rec["pairs"]]
        bias = sum(a["logodds_xy"] + a["logodds_yx"] for a in after) / (2 * len(after))
        for pair, a in zip(rec["pairs"], after):
            first, second = a["logodds_xy"] - bias, -(a["logodds_yx"] - bias)
            assert a["p_x"] == pytest.approx(0.5 * (_sigmoid(first) + _sigmoid(second)))
            if first > 0 and second > 0:
                decided[(rec["user_id"], pair["qid"])] = (pair["x"], pair["y"])
            elif first < 0 and second < 0:
                decided[(rec["user_id"], pair["qid"])] = (pair["y"], pair["x"])
    pairs = load_preferences(tmp_path / "out" / "pairs.jsonl") if decided else []
    assert {(p.user_id, p.meta["qid"]): (p.meta["chosen_rid"], p.meta["rejected_rid"])
            for p in pairs} == decided
    assert card["pairs_kept"] == len(decided)
    # SmolLM2-135M judges close to a coin: it leans (p_x is not 0.5) but only slightly, so
    # the mean label entropy sits just under ln 2.
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "pairs_all.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert all(0.3 < r["p_x_before"] < 0.7 and r["p_x_before"] != 0.5 for r in rows)
    assert card["label_entropy_nats"]["before_refinement"] > math.log(2) - 0.05
    # Every user had an undecided pair, so refinement gave each its one trait.
    assert card["refinement"] == {"users_refined": 2, "traits_added": 2}
    # Reviews steered toward opposite users are not near-copies of each other.
    assert 0.0 < card["diversity"]["mean_pairwise_similarity"] < 0.9
    # Calls stay within the budget stated up front.
    assert card["llm_calls_total"] <= card["budget_planned"]["total"]
