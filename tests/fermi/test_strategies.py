"""Optimizer strategies: OPRO's continuation form for base models, and more samples than K."""

import pytest

from personalign.fermi.config import FermiConfig
from personalign.fermi.memory import Candidate
from personalign.fermi.meta_prompt import build_continuation_prompt
from personalign.fermi.optimizer import EVIDENCE_HEADER, Fermi
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.fake import FakeLLM

from tests.fermi.conftest import keyword_task_llm


def test_continuation_prompt_lists_memory_ascending_and_ends_open(user):
    low = Candidate("Answer plainly.", 0.25, misaligned=(0, 2), predictions=(1, 0, 2))
    high = Candidate("Answer as a careful voter.", 0.5, misaligned=(2,), predictions=(0, 0, 2))
    text = build_continuation_prompt(profile="Age: 30-49", questions=user.opinions[:3],
                                     entries=[low, high], reference=high, mode="fermi")
    assert text.endswith("\n\ntext:")
    assert text.index("text: Answer plainly.\nscore: 25") \
        < text.index("text: Answer as a careful voter.\nscore: 50")
    # Fermi mode shows the reference entry's misses with the person's answer; OPRO does not.
    assert user.opinions[2].question in text and user.opinions[0].question not in text
    opro = build_continuation_prompt(profile="", questions=user.opinions[:3],
                                     entries=[low, high], reference=None, mode="opro")
    assert user.opinions[2].question not in opro and "The person:" not in opro


def test_continuation_strategy_sends_raw_text_and_takes_one_line(user, embedder):
    opt = FakeLLM(responder=lambda text, i: f" Think as a careful voter, try {i}.\nscore: 90",
                  model_id="base-opt")
    fermi = Fermi(FermiConfig(iterations=1, num_candidates=2, max_retries=0,
                              optimizer_strategy="continuation"),
                  keyword_task_llm(), opt, embedder)
    fermi.fit(user.opinions[:20], user.profile, user_id=user.user_id)
    assert opt.prompts_seen[0].endswith("text:")          # raw text, not a chat turn
    prompts = [c.prompt for c in fermi.memory.ranked()]
    assert "Think as a careful voter, try 0." in prompts   # the line only, not the score
    assert all("score" not in p for p in prompts)


def test_more_samples_keep_the_best_k(user, embedder):
    # Odd samples mention "careful", which the fake task model rewards.
    opt = FakeLLM(responder=lambda text, i: f"[Answer as voter {i}{' carefully' * (i % 2)}.]",
                  model_id="opt")
    fermi = Fermi(FermiConfig(iterations=1, num_candidates=2, max_retries=0,
                              samples_per_iteration=6, final_pool="last_k"),
                  keyword_task_llm(), opt, embedder)
    fermi.fit(user.opinions[:20], user.profile, user_id=user.user_id)
    assert fermi.result.counts["optimizer_replies"] == 6
    assert fermi.result.counts["prompts_scored"] == 1 + 6
    assert [p.prompt for p in fermi.pool] == ["Answer as voter 1 carefully.",
                                              "Answer as voter 3 carefully."]


def test_samples_per_iteration_below_k_is_refused():
    with pytest.raises(ConfigError, match="samples_per_iteration"):
        FermiConfig(num_candidates=4, samples_per_iteration=2)


def test_evidence_appends_the_reference_misses_and_the_optimizer_sees_the_instruction(user,
                                                                                      embedder):
    opt = FakeLLM(responder=lambda text, i: f"[Answer as voter {len(text)}-{i}.]",
                  model_id="opt")
    fermi = Fermi(FermiConfig(iterations=2, num_candidates=2, max_retries=0,
                              evidence_per_prompt=3, final_pool="last_k"),  # rewrites only
                  keyword_task_llm(), opt, embedder)
    opinions = user.opinions[:20]
    fermi.fit(opinions, user.profile, user_id=user.user_id)
    optimization = opinions[:16]
    initial = [c for c in fermi.memory.ranked() if c.iteration == 0][0]
    new = [c for c in fermi.memory.ranked() if c.iteration == 1]
    assert new and initial.evidence == ()
    for c in new:
        # The initial prompt (the reference at t=1) misses every non-"Agree" answer.
        assert len(c.evidence) == 3 and set(c.evidence) <= set(initial.misaligned)
    for p in fermi.pool:
        instruction, _, shown = p.prompt.partition("\n\n" + EVIDENCE_HEADER + "\n\n")
        assert instruction.startswith("Answer as voter") and shown.count("Question:") == 3
        # each shown opinion ends with the person's own letter
        for block in shown.split("\n\n"):
            q = next(o for o in optimization if o.question in block)
            assert block.endswith(f"Answer: {'ABC'[q.answer]}")
    # The optimizer's second meta-prompt lists the new prompts without their evidence.
    assert EVIDENCE_HEADER not in opt.prompts_seen[1]
    assert any(c.prompt in opt.prompts_seen[1] for c in new)


def test_evidence_is_fermi_only(user, embedder):
    opt = FakeLLM(responder=lambda text, i: f"[Answer as voter {len(text)}-{i}.]",
                  model_id="opt")
    opro = Fermi(FermiConfig(mode="opro", iterations=1, num_candidates=2, max_retries=0,
                             evidence_per_prompt=3),
                 keyword_task_llm(), opt, embedder)
    opro.fit(user.opinions[:20], user.profile, user_id=user.user_id)
    assert all(EVIDENCE_HEADER not in p.prompt for p in opro.pool)
