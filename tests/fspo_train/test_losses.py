"""FSPO losses against hand computations."""

import math

import pytest
import torch

from personalign.fspo.train.losses import completion_nll, preference_loss, reward_metrics

# policy / reference summed log-probs of (chosen, rejected)
PC, PR, RC, RR = -10.0, -20.0, -12.0, -18.0
# h = (PC - RC) - (PR - RR) = 2 - (-2) = 4


def t(x):
    return torch.tensor([x], dtype=torch.float64)


def test_summed_ipo_equals_formula():
    out = preference_loss(t(PC), t(PR), t(RC), t(RR), beta=0.01, loss_type="ipo_sum")
    assert out.loss.item() == pytest.approx((4 - 1 / (2 * 0.01)) ** 2)  # (4 - 50)^2 = 2116
    assert out.loss.item() == pytest.approx(2116.0)
    assert out.chosen_rewards.item() == pytest.approx(0.02)
    assert out.rejected_rewards.item() == pytest.approx(-0.02)


def test_summed_ipo_differs_from_trl_length_averaged_ipo():
    # TRL's "ipo": each log-ratio divided by its completion length first.
    out = preference_loss(t(PC), t(PR), t(RC), t(RR), beta=0.01, loss_type="ipo",
                          chosen_lengths=t(4.0), rejected_lengths=t(8.0))
    h_avg = 2 / 4 - (-2 / 8)  # 0.75
    assert out.loss.item() == pytest.approx((h_avg - 50) ** 2)  # 2425.5625
    summed = preference_loss(t(PC), t(PR), t(RC), t(RR), beta=0.01, loss_type="ipo_sum")
    assert abs(out.loss.item() - summed.loss.item()) > 100


def test_ipo_averaged_needs_lengths():
    with pytest.raises(ValueError):
        preference_loss(t(PC), t(PR), t(RC), t(RR), beta=0.01, loss_type="ipo")


def test_dpo_sigmoid():
    out = preference_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, loss_type="dpo")
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-0.4)))


def test_summed_ipo_from_token_logps_and_gradient():
    # Token log-probs of a 3-token chosen and 2-token (+1 pad) rejected completion.
    pol = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -9.9]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-2.0, -1.0, -7.0]])
    s_pol, s_ref = (pol * mask).sum(1), (ref * mask).sum(1)
    beta = 0.5
    out = preference_loss(s_pol[:1], s_pol[1:], s_ref[:1], s_ref[1:], beta=beta,
                          loss_type="ipo_sum")
    h = (-3.5 - -4.5) - (-4.0 - -3.0)  # 1 - (-1) = 2
    assert out.loss.item() == pytest.approx((h - 1 / (2 * beta)) ** 2)  # (2 - 1)^2 = 1
    out.loss.backward()
    # d/dpol = 2 (h - 1/(2 beta)) * (+1 on chosen tokens, -1 on rejected tokens, 0 on pad)
    expected = 2 * (h - 1) * torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])
    assert torch.allclose(pol.grad, expected)


def test_reward_metrics():
    m = reward_metrics(torch.tensor([0.3, 0.1, 0.0]), torch.tensor([0.1, 0.2, 0.0]))
    assert m["reward_accuracy"] == pytest.approx(1 / 3)  # ties do not count
    assert m["reward_margin"] == pytest.approx((0.2 - 0.1 + 0.0) / 3)


def test_completion_nll_ignores_prompt_and_padding():
    logps = torch.tensor([[-1.0, -3.0], [-2.0, -100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # sum (the reference's): per completion summed over its tokens, averaged over completions
    assert completion_nll(logps * mask, mask).item() == pytest.approx((4.0 + 2.0) / 2)
    assert completion_nll(logps * mask, mask, "sum").item() == pytest.approx(3.0)
    # mean: over all completion tokens
    assert completion_nll(logps * mask, mask, "mean").item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        completion_nll(logps, mask, "max")


def test_drop_oldest_shots_keeps_question_and_renumbers():
    from personalign.fspo.data.serialization import Shot, serialize_prompt
    from personalign.fspo.train.scoring import drop_oldest_shots

    shots = [Shot(f"Q{i}", f"yes{i}", f"no{i}") for i in range(1, 4)]
    prompt = serialize_prompt(shots, "Final?")
    out, dropped = drop_oldest_shots(prompt, lambda t: t.count("# Example") <= 1)
    assert dropped == 2
    assert out == serialize_prompt(shots[2:], "Final?")
    # Nothing left to drop: the task and question are kept whole.
    out, dropped = drop_oldest_shots(prompt, lambda t: False)
    assert dropped == 3 and out.endswith("## Question\nFinal?\n") and "Example" not in out
