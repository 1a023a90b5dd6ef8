"""End-to-end generation of a tiny dataset with the embedded SmolLM2 (real model, CPU)."""

import time

import pytest

from personalign.fspo.data.card import write_card
from personalign.fspo.data.episodes import read_pairs
from personalign.fspo.data.pipeline import SynthConfig, SyntheticPipeline
from personalign.fspo.data.refine import RefineConfig


@pytest.mark.real_model
def test_tiny_reviews_dataset_with_smollm2(tmp_path, smollm, embedder):
    questions = tmp_path / "questions.txt"
    questions.write_text("Write a review of the movie 'Ocean Lights'.\n"
                         "Write a review of the movie 'The Last Train'.\n")
    cfg = SynthConfig(domain="reviews", users=2, questions_file=str(questions),
                      responses_per_question=2, pairs_per_question=1, max_tokens=16,
                      generators=["smollm2-135m-instruct"], judge_model="smollm2-135m-instruct",
                      consistency="calibrated", refine=RefineConfig(rounds=1, max_traits=1,
                                                                    max_tokens=12))
    start = time.time()
    summary = SyntheticPipeline(cfg, llms={"smollm2-135m-instruct": smollm},
                                progress=False).run(tmp_path / "out")
    elapsed = time.time() - start
    assert summary["users"] == 2 and summary["judged_pairs"] == 4
    card = write_card(tmp_path / "out", embedder=embedder)
    assert card["responses"] == 4
    assert card["pairs_kept"] == len(read_pairs(tmp_path / "out" / "pairs.jsonl"))
    assert 0.0 <= card["label_entropy_nats"]["before_refinement"] <= 0.7
    assert -1.0 <= card["diversity"]["mean_pairwise_similarity"] <= 1.0
    # Calls stay within the budget stated up front.
    assert card["llm_calls_total"] <= card["budget_planned"]["total"]
    # About 15 s on an idle core (4 short generations, 16 scored items, 2 traits).
    assert elapsed < 300
