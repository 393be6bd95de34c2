"""The per-completion GRPO surrogate objective, for the improvement signal I_k (Eq. 8)."""

from __future__ import annotations

import torch


def sequence_surrogate(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    level: str = "token",
) -> torch.Tensor:
    """Clipped surrogate OBJECTIVE per completion (minus GRPO's per-sample loss, KL term excluded), shape (B,).

    Token mean over the completion of min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) with r = exp(logp - old);
    level "sequence" uses one ratio per completion (exp of the mean log-ratio), as GRPOTrainer does.
    logps, old_logps, mask: (B, T); advantages: (B,). Completions with an empty mask get 0.
    """
    log_ratio = logps - old_logps
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    elif level != "token":
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1)
    per_token = torch.minimum(ratio * adv, ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) * adv)
    per_token = per_token.expand_as(mask)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
