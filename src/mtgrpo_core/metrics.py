"""Evaluation metrics of PAPER.md "Metrics": worst-task and average accuracy, Delta_m%, steps to a worst-task
threshold, and how far realized batch shares are from the target weights.

Accuracies may be fractions or percentages (any non-negative unit, used consistently): every metric here is
either in that unit or unit-free.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v


def _accuracies(name: str, value: ArrayLike, ndim: int = 1) -> NDArray[np.float64]:
    acc = v.finite_array(name, value, ndim=ndim)
    if acc.size == 0 or acc.shape[-1] == 0:
        raise ValueError(f"{name} must hold at least one task, got shape {acc.shape}")
    if (acc < 0).any():
        raise ValueError(f"{name} must be >= 0, got {float(acc.min())!r}")
    return acc


def worst_task_accuracy(accuracy: ArrayLike) -> float:
    """min_k Acc(k) over the per-task accuracies (K,)."""
    return float(_accuracies("accuracy", accuracy).min())


def average_accuracy(accuracy: ArrayLike) -> float:
    """(1 / K) * sum_k Acc(k) over the per-task accuracies (K,)."""
    return float(_accuracies("accuracy", accuracy).mean())


def delta_m_percent(accuracy: ArrayLike, reference: ArrayLike) -> float:
    """Average relative change vs a reference method b: (100 / K) * sum_k (Acc(k) - Acc_b(k)) / Acc_b(k).

    A reference accuracy of 0 makes the relative change undefined: it is refused (ValueError), never inf.
    """
    acc = _accuracies("accuracy", accuracy)
    ref = _accuracies("reference", reference)
    if ref.shape != acc.shape:
        raise ValueError(f"reference must have shape {acc.shape} (one per task), got {ref.shape}")
    if (ref == 0).any():
        k = int(np.flatnonzero(ref == 0)[0])
        raise ValueError(
            f"reference accuracy of task {k} is 0: the relative change Delta_m% is undefined; "
            "expected every reference accuracy > 0"
        )
    return float(100.0 * np.mean((acc - ref) / ref))


def steps_to_threshold(accuracy: ArrayLike, threshold: float, steps: ArrayLike | None = None) -> int | None:
    """The first evaluation step whose worst-task accuracy is >= threshold; None if it is never reached.

    accuracy: (S, K), one row of per-task accuracies per evaluation, in step order. steps: (S,) strictly
    increasing step numbers of those rows (default 0, 1, ..., S - 1).
    """
    acc = _accuracies("accuracy", accuracy, ndim=2)
    level = v.real_in_range("threshold", threshold)
    if steps is None:
        at = np.arange(acc.shape[0], dtype=np.int64)
    else:
        at = v.int_array("steps", steps, ndim=1)
        v.same_length("accuracy", acc, "steps", at)
        if (np.diff(at) <= 0).any():
            raise ValueError(f"steps must be strictly increasing, got {at.tolist()}")
    reached = np.flatnonzero(acc.min(axis=1) >= level)
    return int(at[reached[0]]) if reached.size else None


def realized_shares(counts: ArrayLike) -> NDArray[np.float64]:
    """Batch share of each task: counts (K,) of prompts per task -> counts / sum(counts)."""
    c = v.int_array("counts", counts, ndim=1)
    if c.size == 0:
        raise ValueError("counts must hold at least one task, got an empty array")
    if (c < 0).any():
        raise ValueError(f"counts must be >= 0, got {int(c.min())}")
    total = int(c.sum())
    if total == 0:
        raise ValueError(f"counts must not all be 0 (an empty batch has no shares), got {c.tolist()}")
    return c / total


def share_distance(shares: ArrayLike, weights: ArrayLike) -> float:
    """Total variation distance 0.5 * sum_k |shares_k - z_k| of realized shares from weights, in [0, 1]."""
    s = v.simplex("shares", shares)
    z = v.simplex("weights", weights, num_tasks=s.shape[0])
    return float(0.5 * np.abs(s - z).sum())
