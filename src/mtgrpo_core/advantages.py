"""Group advantages and zero-gradient detection, vectorised over groups (PAPER.md, "GRPO in one paragraph").

Two layouts of the same rollouts:
- dense: rewards of shape (P, N), one row per prompt (a group of N rollouts);
- ragged: flat rewards of shape (M,) with integer group ids of shape (M,); groups may differ in size and
  the ids may come in any order (the output keeps the input order).

Every estimator is written once against `GroupLayout` (a per-group mean broadcast back to the rollouts) and
registered by name in `ADVANTAGE_ESTIMATORS`; `group_advantages` and `ragged_group_advantages` dispatch to it.
No Python loop runs over samples or groups: group sums come from `numpy.bincount` (ragged) or a row reduction
(dense). Estimators (defaults in parentheses):
- "grpo": A_i = (r_i - mean_g) / (std_g + eps), std "unbiased" (Bessel) or "biased" (eps = 1e-6).
- "dr_grpo": A_i = r_i - mean_g (Dr. GRPO, no std division).
- "rloo": A_i = r_i - mean of the group's other rollouts = n_g / (n_g - 1) * (r_i - mean_g); needs n_g >= 2.
- "batch_std": A_i = (r_i - mean_g) / (std of all rewards of the batch + eps) (std "unbiased", eps = 1e-6).
A singleton group (n_g = 1) gets advantage 0 from "grpo", "dr_grpo" and "batch_std" (its deviation from its
own mean is exactly 0) and is refused by "rloo" (no leave-one-out baseline exists).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from mtgrpo_core import checks as v

StdKind = Literal["biased", "unbiased"]
ZeroGradientFilter = Literal["lenient", "strict"]
AdvantageEstimator = Callable[..., NDArray[np.float64]]

STD_KINDS: tuple[str, ...] = ("biased", "unbiased")
ZERO_GRADIENT_FILTERS: tuple[str, ...] = ("lenient", "strict")
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


class GroupLayout(Protocol):
    """How rollouts are grouped. Arguments have the rewards' shape; results broadcast against it."""

    @property
    def sizes(self) -> NDArray[np.float64]:
        """Size n_g of each rollout's group, broadcastable to the rewards' shape."""
        ...

    def mean(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per-group mean of x, broadcastable to x's shape."""
        ...

    def max_abs(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per-group maximum of |x|, broadcastable to x's shape."""
        ...


@dataclass(frozen=True)
class _DenseLayout:
    """Rows of a (P, N) array are the groups."""

    group_size: int

    @property
    def sizes(self) -> NDArray[np.float64]:
        return np.full((1, 1), float(self.group_size))

    def mean(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        result: NDArray[np.float64] = x.mean(axis=1, keepdims=True)
        return result

    def max_abs(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        result: NDArray[np.float64] = np.abs(x).max(axis=1, keepdims=True)
        return result


@dataclass(frozen=True)
class _RaggedLayout:
    """Rollout i belongs to group slot inverse[i]; counts[j] rollouts share slot j (0 for an unused slot).

    slot_ids[j] is the group id of slot j; None means slot j is group id j (small non-negative ids).
    """

    inverse: NDArray[np.int64]
    counts: NDArray[np.int64]
    slot_ids: NDArray[np.int64] | None

    @property
    def sizes(self) -> NDArray[np.float64]:
        return self.counts[self.inverse].astype(np.float64)

    def mean(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        sums = np.bincount(self.inverse, weights=x, minlength=self.counts.shape[0])
        result: NDArray[np.float64] = sums[self.inverse] / self.counts[self.inverse]
        return result

    def max_abs(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        top = np.zeros(self.counts.shape[0])
        np.maximum.at(top, self.inverse, np.abs(x))
        return top[self.inverse]

    @property
    def used(self) -> NDArray[np.bool_]:
        """Slots holding at least one rollout."""
        return self.counts > 0

    @property
    def distinct_ids(self) -> NDArray[np.int64]:
        """Group id of each used slot, ascending."""
        return np.flatnonzero(self.used).astype(np.int64) if self.slot_ids is None else self.slot_ids

    @staticmethod
    def from_ids(group_ids: NDArray[np.int64]) -> _RaggedLayout:
        """Slots are the ids themselves when they are small non-negative ints (no sort), else their ranks."""
        if group_ids.min() >= 0 and group_ids.max() < 4 * group_ids.shape[0]:
            return _RaggedLayout(group_ids, np.bincount(group_ids), None)
        slot_ids, inverse = np.unique(group_ids, return_inverse=True)
        inverse = inverse.astype(np.int64).reshape(-1)
        return _RaggedLayout(inverse, np.bincount(inverse), slot_ids.astype(np.int64))


def register_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: add `fn(rewards, groups, **options)` to ADVANTAGE_ESTIMATORS under `name`."""

    def add(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator name {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return add


def _std(var: NDArray[np.float64], sizes: NDArray[np.float64], std: str) -> NDArray[np.float64]:
    """sqrt of a biased variance over groups of `sizes`, Bessel-corrected if std == "unbiased" (n = 1: 0)."""
    v.choice("std", std, STD_KINDS)
    if std == "unbiased":
        var = var * (sizes / np.maximum(sizes - 1.0, 1.0))
    return np.sqrt(var)


def _eps(eps: Any) -> float:
    return v.real_in_range("eps", eps, 0.0, None, low_open=True)


_SAFE_MAGNITUDE = 1e100  # squares of values beyond this can overflow float64


def _safe_scale(rewards: NDArray[np.float64], groups: GroupLayout) -> NDArray[np.float64]:
    """Per group: 1.0, or its largest |reward| when that is so large that squares or sums could overflow.

    Rewards are divided by it before any sum or square (a no-op, bit for bit, for ordinary rewards)."""
    if not rewards.size:
        return np.ones((1,) * rewards.ndim)
    top = groups.max_abs(rewards)
    return np.where(top > _SAFE_MAGNITUDE, top, 1.0)


def _standardised(
    dev: NDArray[np.float64],
    var: NDArray[np.float64],
    sizes: NDArray[np.float64],
    std: str,
    eps: float,
    scale: NDArray[np.float64],
) -> NDArray[np.float64]:
    """dev / (std + eps) for dev and var computed on rewards / scale: (dev/s) / (std/s + eps/s), 0 where both are 0."""
    denom = _std(var, sizes, std) + eps / scale
    out = np.zeros(np.broadcast_shapes(dev.shape, denom.shape))
    np.divide(dev, denom, out=out, where=np.broadcast_to(denom, out.shape) > 0)
    return out


@register_estimator("grpo")
def grpo_advantages(
    rewards: NDArray[np.float64], groups: GroupLayout, *, std: StdKind = "unbiased", eps: float = 1e-6
) -> NDArray[np.float64]:
    """GRPO: A_i = (r_i - mean_g) / (std_g + eps) (PAPER.md "GRPO in one paragraph").

    Defaults match verl (`torch.std`, unbiased, eps 1e-6). TRL 1.16 GRPOTrainer (scale_rewards="group")
    uses its nan-aware `nanstd`, also Bessel-corrected (unbiased), with eps 1e-4: pass eps=1e-4 to match it.
    """
    scale = _safe_scale(rewards, groups)
    dev = _deviations(rewards / scale, groups)
    return _standardised(dev, groups.mean(dev * dev), groups.sizes, std, _eps(eps), scale)


def _deviations(r: NDArray[np.float64], groups: GroupLayout) -> NDArray[np.float64]:
    """r - mean_g, exactly 0 in a group of equal rewards: the float mean of equal values can miss them by an ulp
    (three rewards of 0.1 give deviations of -1.4e-17), which a small eps would magnify into an advantage."""
    dev = r - groups.mean(r)
    equal = groups.max_abs(dev - groups.mean(dev)) == 0.0  # equal rewards <=> equal deviations
    return np.where(equal, 0.0, dev)


@register_estimator("dr_grpo")
def dr_grpo_advantages(rewards: NDArray[np.float64], groups: GroupLayout) -> NDArray[np.float64]:
    """Dr. GRPO: A_i = r_i - mean_g, no std division.

    TRL 1.16 scale_rewards="none"; verl "grpo" with norm_adv_by_std_in_grpo=False.
    """
    scale = _safe_scale(rewards, groups)
    return (rewards / scale - groups.mean(rewards / scale)) * scale


@register_estimator("rloo")
def rloo_advantages(rewards: NDArray[np.float64], groups: GroupLayout) -> NDArray[np.float64]:
    """RLOO: A_i = r_i - (sum_g - r_i) / (n_g - 1) = n_g / (n_g - 1) * (r_i - mean_g); needs n_g >= 2."""
    sizes = np.broadcast_to(groups.sizes, rewards.shape)
    if sizes.size and sizes.min() < 2:
        raise ValueError(
            "method 'rloo' needs at least 2 rollouts in every group (a leave-one-out baseline), "
            f"got a group of size {int(sizes.min())}"
        )
    scale = _safe_scale(rewards, groups)
    return (rewards / scale - groups.mean(rewards / scale)) * (sizes / (sizes - 1.0)) * scale


@register_estimator("batch_std")
def batch_std_advantages(
    rewards: NDArray[np.float64], groups: GroupLayout, *, std: StdKind = "unbiased", eps: float = 1e-6
) -> NDArray[np.float64]:
    """Batch-std scaling: A_i = (r_i - mean_g) / (std of all rewards in the batch + eps).

    This is TRL 1.16's scale_rewards="batch" (group mean, batch `nanstd`, unbiased, eps 1e-4 there).
    """
    top = float(np.abs(rewards).max()) if rewards.size else 0.0
    scale = np.full((1,) * rewards.ndim, top if top > _SAFE_MAGNITUDE else 1.0)  # one scale: one batch std
    r = rewards / scale
    dev_batch = r - r.mean()
    total = np.full((1,) * rewards.ndim, float(rewards.size))
    return _standardised(
        r - groups.mean(r), np.mean(dev_batch * dev_batch, keepdims=True), total, std, _eps(eps), scale
    )


def _estimator(method: Any) -> AdvantageEstimator:
    if method not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"method must be one of {sorted(ADVANTAGE_ESTIMATORS)}, got {method!r}")
    return ADVANTAGE_ESTIMATORS[method]


def _dense_rewards(rewards: ArrayLike) -> NDArray[np.float64]:
    r = v.finite_array("rewards", rewards, ndim=2)
    if r.shape[0] == 0 or r.shape[1] == 0:
        raise ValueError(f"rewards must hold at least one group of at least one rollout, got shape {r.shape}")
    return r


def _ragged_inputs(rewards: ArrayLike, group_ids: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    r = v.finite_array("rewards", rewards, ndim=1)
    ids = v.int_array("group_ids", group_ids, ndim=1)
    v.same_length("rewards", r, "group_ids", ids)
    if r.shape[0] == 0:
        raise ValueError("rewards must hold at least one rollout, got an empty array")
    return r, ids


def group_advantages(rewards: ArrayLike, method: str = "grpo", **options: Any) -> NDArray[np.float64]:
    """Advantages of dense groups: rewards (P, N), one row per prompt -> advantages (P, N), float64.

    `method` names an entry of ADVANTAGE_ESTIMATORS; `options` go to it (e.g. std="biased", eps=1e-4).
    """
    r = _dense_rewards(rewards)
    return _estimator(method)(r, _DenseLayout(r.shape[1]), **options)


def ragged_group_advantages(
    rewards: ArrayLike, group_ids: ArrayLike, method: str = "grpo", **options: Any
) -> NDArray[np.float64]:
    """Advantages of ragged groups: rewards (M,), integer group_ids (M,) -> advantages (M,), float64.

    Rollouts with equal ids form a group; groups may differ in size and ids may come in any order. The output
    keeps the input order.
    """
    r, ids = _ragged_inputs(rewards, group_ids)
    return _estimator(method)(r, _RaggedLayout.from_ids(ids), **options)


def _filter_args(filter: Any, correct_reward: Any) -> tuple[str, float]:
    name = v.choice("filter", filter, ZERO_GRADIENT_FILTERS)
    return name, v.real_in_range("correct_reward", correct_reward)


def zero_gradient_mask(
    rewards: ArrayLike, filter: ZeroGradientFilter = "lenient", correct_reward: float = 1.0
) -> NDArray[np.bool_]:
    """Zero-gradient groups of dense rewards (P, N) -> bool (P,), True = the group gives no gradient.

    lenient: all N rewards are exactly equal. strict: all rollouts correct or all incorrect, where correct
    means reward == correct_reward (PAPER.md "Zero-gradient prompts"). A group of one rollout is always True.
    """
    r = _dense_rewards(rewards)
    return checked_zero_gradient_mask(r, *_filter_args(filter, correct_reward))


def checked_zero_gradient_mask(r: NDArray[np.float64], filter: str, correct_reward: float) -> NDArray[np.bool_]:
    """`zero_gradient_mask` of rewards and filter settings already checked (the sampler's reports)."""
    if filter == "lenient":
        result: NDArray[np.bool_] = r.max(axis=1) == r.min(axis=1)
        return result
    correct = r == correct_reward
    strict: NDArray[np.bool_] = correct.all(axis=1) | ~correct.any(axis=1)
    return strict


def reported_groups(
    n: int,
    group_size: int,
    rewards: ArrayLike | None,
    informative: ArrayLike | None,
    filter: str,
    correct_reward: float,
) -> tuple[NDArray[np.float64] | None, NDArray[np.bool_]]:
    """A report's n groups: (rewards (n, N) or None, informative (n,)), from exactly one of the rewards (the
    `filter`, checked by the sampler's config, decides; "none" judges as "lenient") or the caller's bool flags."""
    if (rewards is None) == (informative is None):
        raise ValueError("pass exactly one of rewards (n, N) or informative (n,)")
    if rewards is not None:
        r = v.finite_array("rewards", rewards, ndim=2)
        if r.shape != (n, group_size):
            raise ValueError(f"rewards must have shape ({n}, {group_size}), got {r.shape}")
        strict = filter == "strict"
        return r, ~checked_zero_gradient_mask(r, "strict" if strict else "lenient", float(correct_reward))
    info = np.asarray(informative)
    if info.dtype != np.bool_ or info.shape != (n,):
        raise ValueError(f"informative must be a bool array of shape ({n},), got dtype {info.dtype} shape {info.shape}")
    return None, info


def ragged_zero_gradient_mask(
    rewards: ArrayLike,
    group_ids: ArrayLike,
    filter: ZeroGradientFilter = "lenient",
    correct_reward: float = 1.0,
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Zero-gradient groups of ragged rewards -> (distinct group ids ascending (G,), bool mask (G,)).

    Same filters as `zero_gradient_mask`. Per rollout: `mask[np.searchsorted(ids, group_ids)]`.
    """
    r, ids = _ragged_inputs(rewards, group_ids)
    name, target = _filter_args(filter, correct_reward)
    layout = _RaggedLayout.from_ids(ids)
    slots = layout.counts.shape[0]
    if name == "lenient":
        # Any member of a group serves as its representative: the group is uniform iff nobody differs from it.
        representative = np.zeros(slots)
        representative[layout.inverse] = r
        differing = np.bincount(layout.inverse, weights=r != representative[layout.inverse], minlength=slots)
        mask = differing == 0
    else:
        n_correct = np.bincount(layout.inverse, weights=r == target, minlength=slots)
        mask = (n_correct == 0) | (n_correct == layout.counts)
    return layout.distinct_ids, mask[layout.used]


def token_level_advantages(
    advantages: ArrayLike,
    response_mask: ArrayLike,
    *,
    dtype: DTypeLike = np.float32,
    out: NDArray[Any] | None = None,
) -> NDArray[Any]:
    """Per-sequence advantages (rows,) to token level: out[i, t] = advantages[i] * response_mask[i, t].

    response_mask may be bool, integer or float (a CPU torch tensor works through numpy); bool is the
    cheapest to read. Output dtype float32 (what trainers use) or float64. One fused pass over the mask: no
    temporary of shape (rows, T) is made. Pass `out` (C-contiguous, (rows, T), that dtype) to reuse a buffer.
    The mask's values are not inspected (that would cost a second pass): with a 0/1 mask padding gets 0.
    """
    out_dtype = np.dtype(dtype)
    if out_dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {out_dtype}")
    adv = v.finite_array("advantages", advantages, ndim=1)
    mask = np.asarray(response_mask)
    if mask.ndim != 2:
        raise ValueError(f"response_mask must have 2 dimensions (rows, T), got shape {mask.shape}")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"response_mask must be bool, integer or float, got dtype {mask.dtype}")
    v.same_length("advantages", adv, "response_mask", mask)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
        if out.shape != mask.shape or out.dtype != out_dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous {out_dtype} array of shape {mask.shape}, "
                f"got {out.dtype} {out.shape} (c_contiguous={out.flags.c_contiguous})"
            )
    column = adv.astype(out_dtype)[:, None]
    result: NDArray[Any] = np.multiply(mask, column, out=out, dtype=out_dtype)
    return result
