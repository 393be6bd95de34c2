"""Per-row values of a trained verl batch, read from TransferQueue: advantages and, for I_k, the clipped surrogate.

I_k (Eq. 8) needs each sample's clipped surrogate before and after the update. verl's actor returns batch-wide
metrics only, so after `update_actor` the driver runs one more log-prob pass with the updated actor and computes
the per-sample surrogate itself against `old_log_probs` (the policy before the update, where the ratio is 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from numpy.typing import NDArray
from transfer_queue import KVBatchMeta
from verl.workers.utils.padding import response_from_nested

from mtgrpo_backends.torch.ops import sequence_mean, sequence_surrogate


@dataclass(frozen=True)
class Rows:
    """advantage (R,) the token-mean advantage of each row; valid (R,) it has response tokens; surrogate
    (before, after), each (R,), when measured."""

    advantage: NDArray[np.float64]
    valid: NDArray[np.bool_]
    surrogate: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None


@dataclass(frozen=True)
class SurrogateSettings:
    """The actor's policy-loss settings the per-sample surrogate mirrors: the rollout temperature, the clip range
    and the ratio level ("token", or "sequence" for GSPO)."""

    temperature: float
    clip_low: float
    clip_high: float
    level: str


def _padded(value: torch.Tensor) -> torch.Tensor:
    return value.to_padded_tensor(0.0) if value.is_nested else value


def read_rows(batch: KVBatchMeta, actor: Any = None, surrogate: SurrogateSettings | None = None) -> Rows:
    """Rows of the trained batch; with surrogate settings also each row's surrogate before and after the update
    (one extra `actor.compute_log_prob` pass over the whole batch, actor being the updated actor's worker group).
    Token advantages are averaged per row (they are constant under GRPO)."""
    keys, partition = list(batch.keys), batch.partition_id
    fields = ["advantages", "response_mask"]
    if surrogate is not None:
        info = {"calculate_entropy": False, "compute_loss": False, "temperature": surrogate.temperature}
        actor.compute_log_prob(KVBatchMeta(keys, list(batch.tags), partition, None, info))
        fields += ["old_log_probs", "log_probs"]
    data = tq.kv_batch_get(keys=keys, partition_id=partition, select_fields=fields)
    mask = _padded(data["response_mask"]).double()
    advantages = _padded(data["advantages"]).double()
    row_adv = sequence_mean(advantages, mask)
    valid = mask.sum(dim=1) > 0
    if surrogate is None:
        return Rows(row_adv.numpy(), valid.numpy())
    after = _padded(response_from_nested(data["log_probs"], data["response_mask"])).double()
    old = _padded(data["old_log_probs"]).double()
    before_value, after_value = (
        sequence_surrogate(
            logps, old, row_adv, mask, clip_low=surrogate.clip_low, clip_high=surrogate.clip_high, level=surrogate.level
        )
        for logps in (old, after)  # before the update the policy is the old one: ratio 1
    )
    return Rows(row_adv.numpy(), valid.numpy(), (before_value.numpy(), after_value.numpy()))
