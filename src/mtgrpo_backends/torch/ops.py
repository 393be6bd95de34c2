"""Tensor versions of the core's per-step arithmetic: group advantages, the clipped surrogate, per-task statistics.

Everything but the group advantages stays on the tensors' device (no `.item()`, no host copies), so the same calls
run on CUDA; group advantages are the core's own estimators (`mtgrpo_core.group_advantages`), one host trip of
P x N rewards. Shapes: R rows
(sequences), T completion tokens, P prompts (groups) of N rollouts, K tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from mtgrpo_core import checks as v
from mtgrpo_core.advantages import group_advantages as core_group_advantages

Aggregation = Literal["token-mean", "seq-mean"]
AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean")


def group_advantages(rewards: torch.Tensor, method: str = "grpo", **options: Any) -> torch.Tensor:
    """Advantages of dense groups, rewards (P, N) -> (P, N) in rewards' dtype and device: the core's estimator
    `method` (`mtgrpo_core.group_advantages`, so one registered with `register_estimator` runs here too). Rewards
    are a few numbers per group: they make one trip to the host."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (P, N) with P, N >= 1, got {tuple(rewards.shape)}")
    adv = core_group_advantages(rewards.detach().cpu().double().numpy(), method, **options)
    return torch.from_numpy(adv).to(device=rewards.device, dtype=rewards.dtype)


def _token_objective(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> torch.Tensor:
    """min(ratio A, clip(ratio, 1 - clip_low, 1 + clip_high) A) per token, (R, T); A per sequence (R,)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    return torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv)


def _aggregate(x: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """token-mean: over all real tokens of the batch; seq-mean: over tokens of each sequence, then sequences."""
    if aggregation == "token-mean":
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return sequence_mean(x, mask).mean()


def sequence_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (R, T) over each row's real tokens -> (R,); a row without tokens gives 0."""
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@dataclass
class SurrogateLoss:
    """The loss to minimise and detached diagnostics (0-d tensors)."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    kl: torch.Tensor


def clipped_surrogate_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    aggregation: str = "token-mean",
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> SurrogateLoss:
    """PPO/GRPO clipped surrogate with clip-higher (DAPO; the paper uses 0.2 / 0.28), negated for minimising.

    logp, old_logp, mask: (R, T) token log-probs under the current and the behaviour policy, 1 = real token.
    advantages: (R,) one per sequence. With ref_logp and kl_coef > 0 adds kl_coef * KL(pi || pi_ref) by the k3
    estimator exp(ref - logp) - (ref - logp) - 1, aggregated like the surrogate.
    """
    v.real_in_range("clip_low", clip_low, 0.0, 1.0, high_open=True)
    v.real_in_range("clip_high", clip_high, 0.0)
    v.choice("aggregation", aggregation, AGGREGATIONS)
    v.real_in_range("kl_coef", kl_coef, 0.0)
    if not (logp.shape == old_logp.shape == mask.shape) or advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"logp, old_logp, mask must share a shape (R, T) and advantages be (R,), got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}, {tuple(advantages.shape)}"
        )
    mask = mask.to(logp.dtype)
    objective = _token_objective(logp, old_logp, advantages, clip_low, clip_high)
    loss = -_aggregate(objective, mask, aggregation)
    ratio = torch.exp(logp.detach() - old_logp)
    clipped = ((ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high)).to(logp.dtype)
    clip_fraction = (clipped * mask).sum() / mask.sum().clamp(min=1.0)
    kl = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if ref_logp is not None and kl_coef > 0:
        if ref_logp.shape != logp.shape:
            raise ValueError(f"ref_logp must have shape {tuple(logp.shape)}, got {tuple(ref_logp.shape)}")
        diff = ref_logp - logp
        kl = _aggregate(torch.exp(diff) - diff - 1.0, mask, aggregation)
        loss = loss + kl_coef * kl
    return SurrogateLoss(loss=loss, clip_fraction=clip_fraction.detach(), kl=kl.detach())


def sequence_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    level: str = "token",
) -> torch.Tensor:
    """Per-sequence clipped surrogate OBJECTIVE (R,): the per-sample values of J_GRPO for I_k (Eq. 8).

    Token mean over each completion of min(r A, clip(r, 1 - clip_low, 1 + clip_high) A), r = exp(logp - old);
    level "sequence" uses one ratio per completion (exp of its mean log-ratio), as TRL's GRPOTrainer can.
    Evaluate with the policy before the update (logp = old_logp: the value is A) and after it; the core's signal
    path (`mtgrpo_core.step_signals`) reduces after - before per task. A row without tokens gives 0.
    """
    v.choice("level", level, ("token", "sequence"))
    mask = mask.to(logp.dtype)
    if level == "sequence":
        seq = sequence_mean(logp - old_logp, mask)[:, None].expand_as(mask)
        logp, old_logp = seq, torch.zeros_like(seq)
    return sequence_mean(_token_objective(logp, old_logp, advantages, clip_low, clip_high), mask)
