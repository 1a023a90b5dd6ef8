"""Preference losses on sequence log-probabilities, and implicit-reward metrics.

All inputs are per-example log-probabilities SUMMED over the response tokens (the FSPO
convention). ``ipo`` is TRL's length-averaged variant, kept for comparison: with beta = 0.01
the two are different losses (FSPO's target margin 1/(2 beta) = 50 nats is on the summed
log-ratio; TRL divides each log-ratio by its completion length first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PreferenceOutput:
    losses: torch.Tensor            # per example
    chosen_rewards: torch.Tensor    # beta * (log pi(y_w) - log ref(y_w)), detached
    rejected_rewards: torch.Tensor  # beta * (log pi(y_l) - log ref(y_l)), detached

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()


def ipo_sum_losses(h: torch.Tensor, beta: float) -> torch.Tensor:
    """FSPO's IPO: (h - 1/(2 beta))^2 with h the difference of SUMMED log-ratios."""
    return (h - 1.0 / (2.0 * beta)) ** 2


def dpo_losses(h: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (sigmoid): -log sigmoid(beta * h)."""
    return -F.logsigmoid(beta * h)


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                    ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *, beta: float,
                    loss_type: str = "ipo_sum", chosen_lengths: torch.Tensor | None = None,
                    rejected_lengths: torch.Tensor | None = None) -> PreferenceOutput:
    """Per-example preference losses from summed log-probs of policy and reference.

    ``chosen_lengths``/``rejected_lengths`` (completion token counts) are needed only by the
    length-averaged ``ipo`` variant.
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio
    if loss_type == "ipo_sum":
        losses = ipo_sum_losses(h, beta)
    elif loss_type == "dpo":
        losses = dpo_losses(h, beta)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss 'ipo' (length-averaged) needs chosen_lengths and rejected_lengths")
        h_avg = (chosen_logratio / chosen_lengths.clamp(min=1)
                 - rejected_logratio / rejected_lengths.clamp(min=1))
        losses = ipo_sum_losses(h_avg, beta)
    else:
        raise ValueError(f"unknown loss type {loss_type!r}")
    return PreferenceOutput(losses, (beta * chosen_logratio).detach(),
                            (beta * rejected_logratio).detach())


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """Implicit reward accuracy (strictly chosen > rejected) and mean margin."""
    if chosen_rewards.numel() == 0:
        return {"reward_accuracy": float("nan"), "reward_margin": float("nan")}
    margins = (chosen_rewards - rejected_rewards).float()
    return {"reward_accuracy": (margins > 0).float().mean().item(),
            "reward_margin": margins.mean().item(),
            "reward_chosen": chosen_rewards.float().mean().item(),
            "reward_rejected": rejected_rewards.float().mean().item()}


def completion_nll(token_logps: torch.Tensor, mask: torch.Tensor,
                   reduction: str = "sum") -> torch.Tensor:
    """Completion-only SFT loss of completions (rows) of one prompt: ``sum``, the negative
    log-likelihood summed over each completion's masked tokens and averaged over completions
    (the reference code's); ``mean``, averaged over all masked tokens."""
    nll = -(token_logps * mask).sum()
    if reduction == "sum":
        return nll / token_logps.shape[0]
    if reduction == "mean":
        return nll / mask.sum().clamp(min=1)
    raise ValueError(f"unknown reduction {reduction!r}")
