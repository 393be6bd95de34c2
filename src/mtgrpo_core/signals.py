"""Per-task signals of one training step: J_k, accuracy, the improvement I_k (Eq. 8) and SEC's mean |A|.

Every function takes per-rollout values with a task id per rollout and returns one value per task, shape (K,),
with NaN at tasks that had no rollout this step (counts say which). Feed ALL rollouts of the step, before any
zero-gradient filtering (PAPER.md "Setting"): a task the policy fails completely must show a low J_k.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v


def _per_task(
    name: str, values: ArrayLike, task_ids: ArrayLike, num_tasks: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Per-task means of finite per-rollout `values` (NaN where a task has none) and per-task counts."""
    k = v.positive_int("num_tasks", num_tasks)
    x = v.finite_array(name, values, ndim=1)
    return _checked_per_task(name, x, task_ids, k)


def _checked_per_task(
    name: str, x: NDArray[np.float64], task_ids: ArrayLike, k: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """`_per_task` of values already checked (finite float64, 1-D) and k already checked; task_ids are checked."""
    ids = v.task_ids("task_ids", task_ids, k)
    v.same_length(name, x, "task_ids", ids)
    counts = np.bincount(ids, minlength=k).astype(np.int64)
    sums = np.bincount(ids, weights=x, minlength=k)
    means = np.full(k, np.nan)
    np.divide(sums, counts, out=means, where=counts > 0)
    return means, counts


def task_rewards(
    rewards: ArrayLike, task_ids: ArrayLike, num_tasks: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """J_k: mean reward of all of task k's rollouts this step -> (J (K,), NaN where absent; counts (K,))."""
    return _per_task("rewards", rewards, task_ids, num_tasks)


def task_accuracy(
    rewards: ArrayLike, task_ids: ArrayLike, num_tasks: int, correct_reward: float = 1.0
) -> NDArray[np.float64]:
    """Per-task accuracy: fraction of task k's rollouts with reward == correct_reward; NaN where absent."""
    target = v.real_in_range("correct_reward", correct_reward)
    r = v.finite_array("rewards", rewards, ndim=1)
    k = v.positive_int("num_tasks", num_tasks)
    return _checked_per_task("rewards", (r == target).astype(np.float64), task_ids, k)[0]


IMPROVEMENT_REDUCTIONS: tuple[str, ...] = ("mean", "sum")
DEFAULT_IMPROVEMENT_REDUCE = "mean"


def task_improvement(
    before: ArrayLike,
    after: ArrayLike,
    task_ids: ArrayLike,
    num_tasks: int,
    reduce: str = DEFAULT_IMPROVEMENT_REDUCE,
) -> NDArray[np.float64]:
    """I_k (Eq. 8): task k's GRPO surrogate objective after the update minus before it, on the step's batch.

    before, after: per-sample surrogate OBJECTIVE values (higher is better, i.e. minus the per-sample loss) of
    the same samples, evaluated with the policy before and after the update; positive I_k = improving.
    reduce: "mean" (the library's default) averages after - before over task k's samples, so I_k does not grow
    with the batch share that the weights themselves set; "sum" is the paper's reference code (it sums
    per-sample losses per task), on which the paper's lambda and clip values were chosen. See docs/signals.md.
    Clipping belongs to the rule (`IWURule.improvement_clip`). Returns (K,), NaN for tasks with no sample.
    """
    b = v.finite_array("before", before, ndim=1)
    a = v.finite_array("after", after, ndim=1)
    v.same_length("before", b, "after", a)
    v.choice("reduce", reduce, IMPROVEMENT_REDUCTIONS)
    k = v.positive_int("num_tasks", num_tasks)
    change = a - b
    if not np.isfinite(change).all():  # both finite, yet the difference can overflow
        v.finite_array("after - before", change, ndim=1)
    improvement, counts = _checked_per_task("after - before", change, task_ids, k)
    if reduce == "sum":
        improvement = improvement * counts
    return improvement


def mean_abs_advantage_per_task(advantages: ArrayLike, task_ids: ArrayLike, num_tasks: int) -> NDArray[np.float64]:
    """Mean |A| over task k's samples this step (the SEC bandit's reward r_k); NaN where a task is absent.

    The SEC reference code uses 0 for tasks not sampled; here absence stays visible (NaN), the rule decides.
    """
    a = v.finite_array("advantages", advantages, ndim=1)
    k = v.positive_int("num_tasks", num_tasks)
    return _checked_per_task("|advantages|", np.abs(a), task_ids, k)[0]


class RewardChangeImprovement:
    """APPROXIMATE I_k for trainers that cannot re-evaluate the surrogate after an update.

    I_k is estimated as an exponential moving average of the change of J_k between the steps at which task k
    was present: d = J_k(t) - J_k(t_prev); est <- d on the first change, else smoothing * est +
    (1 - smoothing) * d. This is NOT Eq. 8: J_k(t) is measured before step t's update, so the change reflects
    the previous update(s) (one step of lag, more if the task was absent meanwhile), on other prompts than the
    batch (sampling noise, hence the smoothing), and in reward rather than surrogate units.
    `update` returns the estimate at present tasks, 0.0 at a present task seen for the first time (no change
    observed yet), and NaN at absent tasks; absent tasks keep their state.
    """

    KIND = "reward_change_improvement"

    def __init__(self, num_tasks: int, smoothing: float = 0.5) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self._smoothing = v.real_in_range("smoothing", smoothing, 0.0, 1.0, high_open=True)
        self._last_reward = np.full(self._k, np.nan)
        self._estimate = np.full(self._k, np.nan)

    @property
    def num_tasks(self) -> int:
        return self._k

    def update(self, reward: ArrayLike) -> NDArray[np.float64]:
        """Take this step's J (K,), NaN where a task is absent, and return the approximate I (K,)."""
        j = v.as_float_array("reward", reward, ndim=1)
        if j.shape[0] != self._k:
            raise ValueError(f"reward must have {self._k} entries (one per task), got {j.shape[0]}")
        if np.isinf(j).any():
            raise ValueError(f"reward must be finite or NaN (absent task), got {j[np.isinf(j)][0]!r}")
        present = ~np.isnan(j)
        seen = present & ~np.isnan(self._last_reward)
        change = j - self._last_reward
        fresh = seen & np.isnan(self._estimate)
        self._estimate = np.where(fresh, change, self._estimate)
        smoothed = self._smoothing * self._estimate + (1.0 - self._smoothing) * change
        self._estimate = np.where(seen & ~fresh, smoothed, self._estimate)
        self._last_reward = np.where(present, j, self._last_reward)
        result = np.where(seen, self._estimate, 0.0)
        result[~present] = np.nan
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "num_tasks": self._k,
            "smoothing": self._smoothing,
            "last_reward": self._last_reward.tolist(),
            "estimate": self._estimate.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, self.KIND, self._k)
        smoothing = v.real_in_range("state['smoothing']", state["smoothing"], 0.0, 1.0, high_open=True)
        arrays = []
        for key in ("last_reward", "estimate"):
            arr = v.as_float_array(f"state[{key!r}]", state[key], ndim=1)
            if arr.shape[0] != self._k or np.isinf(arr).any():
                raise ValueError(f"state[{key!r}] must hold {self._k} finite-or-NaN values, got {arr.tolist()}")
            arrays.append(arr.copy())
        self._smoothing = smoothing
        self._last_reward, self._estimate = arrays
