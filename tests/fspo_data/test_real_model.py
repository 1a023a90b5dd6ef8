"""End-to-end generation of a tiny dataset with the embedded SmolLM2 (real model, CPU), and
the default judge (Qwen 1.5B Instruct) on known pairs.

Wall times are measured by ``benchmarks/fspo_data_bench.py`` and ``personalign fspo
judge-check``, not asserted here."""

import json
import math

import pytest

from personalign.fspo.data.card import write_card
from personalign.fspo.data.judge import DEFAULT_CONSISTENCY, binary_entropy
from personalign.fspo.data.judge_check import check_judge, synthetic_known_pairs
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
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "pairs_all.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    # Refinement gives a trait only to users left with an undecided pair (order-inconsistent
    # or above the entropy threshold), at most one each (max_traits=1).
    undecided = {r["user_id"] for r in rows if r["label_before"] is None
                 or binary_entropy(r["p_x_before"]) > 0.6}
    assert card["refinement"]["users_refined"] <= len(undecided)
    assert card["refinement"]["traits_added"] == card["refinement"]["users_refined"]
    # Reviews steered toward opposite users are not near-copies of each other.
    assert 0.0 < card["diversity"]["mean_pairwise_similarity"] < 0.9
    # Calls stay within the budget stated up front.
    assert card["llm_calls_total"] <= card["budget_planned"]["total"]


# One question of each domain, asked by its two opposite users with the sides swapped: a judge
# blind to the user scores 0.5 here (``fspo judge-check`` runs all 36 pairs).
KNOWN = ("elix-00", "elix-01", "reviews-00", "reviews-01", "roleplay-00", "roleplay-01")


@pytest.mark.real_model
def test_qwen_judge_beats_chance_on_known_pairs(qwen_llamacpp):
    pairs = [p for p in synthetic_known_pairs() if p.pair_id in KNOWN]
    assert len(pairs) == 6
    rows = {r["consistency"]: r for r in check_judge(qwen_llamacpp, pairs)["table"]}
    row = rows[DEFAULT_CONSISTENCY]
    # measured: 5 right, 1 tie, none wrong (0.92); P(chosen) 0.56, above 0.5 on five of six
    assert row["accuracy"] >= 2 / 3
    assert row["accuracy_on_decided"] > 0.5
    assert row["p_chosen"] > 0.52
