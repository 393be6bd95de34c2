"""The one signal path: a step's facts -> per-task signals (J_k, accuracy, I_k of Eq. 8, SEC's mean |A|).

Every signal function takes per-rollout values with a task id per rollout and returns one value per task, shape (K,),
with NaN at tasks that had no rollout this step (counts say which). Feed ALL rollouts of the step, before any
zero-gradient filtering (PAPER.md "Setting"): a task the policy fails completely must show a low J_k.
`minibatch_improvement` gives I_k per PPO mini-batch for the reference presets' one weight update per mini-batch.

A backend reports what it observed, per rollout and per trained sample, in a `StepFacts`; `step_signals` turns it
into the per-task signals the weighting rule reads. No backend derives a signal itself, so a lambda (or a
conclusion) measured on one backend carries to another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.protocols import CORE_SIGNALS, SIGNAL_NEEDS, TaskSignals


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
    ids, counts = _checked_tasks(name, x, task_ids, k)
    return _task_means(x, ids, counts), counts


def _checked_tasks(
    name: str, x: NDArray[np.float64], task_ids: ArrayLike, k: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """task_ids checked (ids in [0, k), one per entry of x, called `name` in the refusal) and counted per task."""
    ids = v.task_ids("task_ids", task_ids, k)
    v.same_length(name, x, "task_ids", ids)
    return ids, np.bincount(ids, minlength=k).astype(np.int64)


def _task_means(x: NDArray[np.float64], ids: NDArray[np.int64], counts: NDArray[np.int64]) -> NDArray[np.float64]:
    """Per-task means of checked values x with checked ids and their counts (NaN where a task has none)."""
    sums = np.bincount(ids, weights=x, minlength=counts.shape[0])
    means = np.full(counts.shape[0], np.nan)
    np.divide(sums, counts, out=means, where=counts > 0)
    return means


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
    change = _surrogate_change(before, after, reduce)
    k = v.positive_int("num_tasks", num_tasks)
    _finite_change(change)
    return _reduced(change, *_checked_tasks("after - before", change, task_ids, k), reduce)


def _surrogate_change(before: ArrayLike, after: ArrayLike, reduce: str) -> NDArray[np.float64]:
    """after - before of checked surrogate values (finite, 1-D, equal lengths) and a checked `reduce`."""
    b = v.finite_array("before", before, ndim=1)
    a = v.finite_array("after", after, ndim=1)
    v.same_length("before", b, "after", a)
    v.choice("reduce", reduce, IMPROVEMENT_REDUCTIONS)
    return a - b


def _finite_change(change: NDArray[np.float64]) -> None:
    """Refuse a difference of finite values that overflowed."""
    if not np.isfinite(change).all():
        v.finite_array("after - before", change, ndim=1)


def _reduced(
    change: NDArray[np.float64], ids: NDArray[np.int64], counts: NDArray[np.int64], reduce: str
) -> NDArray[np.float64]:
    """I_k from checked per-sample changes, ids and counts: their mean per task, times the count for "sum"."""
    improvement = _task_means(change, ids, counts)
    return improvement * counts if reduce == "sum" else improvement


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


def minibatch_improvement(
    before: ArrayLike,
    after: ArrayLike,
    task_ids: ArrayLike,
    minibatch: ArrayLike,
    num_tasks: int,
    reduce: str = "sum",
) -> NDArray[np.float64]:
    """I_k per PPO mini-batch, shape (M, K): row m reduces after - before over task k's samples of mini-batch m
    ("sum", the reference code's, or "mean": `signals.task_improvement`).

    The reference code (dp_actor.py `update_policy`) measures, for each mini-batch, each sample's loss in the
    forward pass before that mini-batch's optimizer step and again right after it, and sums per task; the
    weights then take one step per mini-batch (`IWURule.update_minibatches`). before, after: per-sample
    surrogate OBJECTIVE (minus the loss), so positive = improving, as in `signals.task_improvement`.
    minibatch: (s,) index 0..M-1 of the mini-batch each sample was trained in; M = max + 1. A task with no
    sample in a mini-batch gets 0 there, as in the reference code.
    """
    k = v.positive_int("num_tasks", num_tasks)
    mb = v.int_array("minibatch", minibatch, ndim=1)
    b = v.finite_array("before", before, ndim=1)
    v.same_length("before", b, "minibatch", mb)
    if mb.size == 0:
        raise ValueError("minibatch is empty: no sample was trained, so there is no mini-batch update")
    if (mb < 0).any():
        raise ValueError(f"minibatch indices must be >= 0, got minimum {int(mb.min())}")
    a = v.finite_array("after", after, ndim=1)
    v.same_length("before", b, "after", a)
    tasks = v.task_ids("task_ids", task_ids, k)
    v.same_length("before", b, "task_ids", tasks)
    steps = range(int(mb.max()) + 1)
    rows = [task_improvement(b[mb == m], a[mb == m], tasks[mb == m], k, reduce=reduce) for m in steps]
    return np.nan_to_num(np.stack(rows), nan=0.0)


@dataclass(frozen=True)
class StepFacts:
    """What a trainer observed in one step. n generated rollouts, m trained samples (rollouts of batch groups).

    rollout_task, rollout_reward: (n,) task id and reward of EVERY rollout generated this step, before any
        zero-gradient filtering (J_k and accuracy come from these). Left None (both), `Controller.end_step` takes
        them from the step's batch conversation (every group reported with rewards).
    sample_task, sample_advantage: (m,) task id and advantage of each trained sample (SEC's r_k = mean |A|).
    surrogate_task, surrogate_before, surrogate_after: (s,) the per-sample clipped surrogate objective evaluated
        with the policy before and after the update (I_k, Eq. 8). surrogate_task defaults to sample_task; a trainer
        that measures a sample more than once (several epochs) lists it once per measurement.
    surrogate_minibatch: (s,) index (0, 1, ...) of the optimizer step (PPO mini-batch) each surrogate value was
        measured around, when the trainer measures before and after each mini-batch's step; it gives
        TaskSignals.improvement_steps (the reference presets update the weights once per mini-batch).
    Arrays left None are not measured; the signals they feed come back as None.
    """

    rollout_task: ArrayLike | None = None
    rollout_reward: ArrayLike | None = None
    sample_task: ArrayLike | None = None
    sample_advantage: ArrayLike | None = None
    surrogate_before: ArrayLike | None = None
    surrogate_after: ArrayLike | None = None
    surrogate_task: ArrayLike | None = None
    surrogate_minibatch: ArrayLike | None = None


def step_signals(
    facts: StepFacts,
    num_tasks: int,
    *,
    improvement_reduce: str = DEFAULT_IMPROVEMENT_REDUCE,
    correct_reward: float = 1.0,
) -> TaskSignals:
    """TaskSignals of one step from its facts.

    reward J_k and accuracy: over all of task k's rollouts (NaN, i.e. absent, where it had none).
    improvement I_k: `task_improvement(before, after, reduce=improvement_reduce)` over task k's surrogate samples.
    mean_abs_advantage r_k: mean |A| over task k's trained samples.
    A task with rollouts but no trained sample has no I_k or r_k: TaskSignals records 0 and lists it as untrained.
    A task with trained samples but no rollout this step (all of them carried over from an earlier step) is
    absent: J_k is a measurement of the current policy, so its signals wait for a step that generates for it.
    """
    if not isinstance(facts, StepFacts):
        raise TypeError(f"facts must be a StepFacts, got {type(facts).__name__}")
    k = v.positive_int("num_tasks", num_tasks)
    if facts.rollout_task is None or facts.rollout_reward is None:
        raise ValueError(
            "facts.rollout_task and facts.rollout_reward are needed (every rollout generated this step); "
            "Controller.end_step fills them in from the batch conversation when both are None"
        )
    # each array is checked once, in the order the per-signal functions check them (the same refusals)
    r = v.finite_array("rewards", facts.rollout_reward, ndim=1)
    rollouts = _checked_tasks("rewards", r, facts.rollout_task, k)
    reward = _task_means(r, *rollouts)
    target = v.real_in_range("correct_reward", correct_reward)
    accuracy = _task_means((r == target).astype(np.float64), *rollouts)
    mean_abs = samples = None
    if facts.sample_advantage is not None:
        if facts.sample_task is None:
            raise ValueError("facts.sample_task is None but facts.sample_advantage is given: pass both")
        a = v.finite_array("advantages", facts.sample_advantage, ndim=1)
        samples = _checked_tasks("|advantages|", a, facts.sample_task, k)
        mean_abs = _task_means(np.abs(a), *samples)
    improvement = steps = None
    measured = (facts.surrogate_before is not None, facts.surrogate_after is not None)
    if any(measured):
        if not all(measured):
            raise ValueError("facts.surrogate_before and facts.surrogate_after must be given together")
        task = facts.sample_task if facts.surrogate_task is None else facts.surrogate_task
        if task is None:
            raise ValueError("facts.surrogate_task (or facts.sample_task) is needed with the surrogate values")
        assert facts.surrogate_before is not None and facts.surrogate_after is not None
        change = _surrogate_change(facts.surrogate_before, facts.surrogate_after, improvement_reduce)
        _finite_change(change)
        if facts.surrogate_task is None and samples is not None:  # the sample tasks, checked above
            v.same_length("after - before", change, "task_ids", samples[0])
        else:
            samples = _checked_tasks("after - before", change, task, k)
        improvement = _reduced(change, *samples, improvement_reduce)
        if facts.surrogate_minibatch is not None and np.size(facts.surrogate_minibatch) == 0:
            steps = np.zeros((1, k))  # nothing trained: one update with I_k = 0, as `update` would take
        elif facts.surrogate_minibatch is not None:
            steps = minibatch_improvement(
                facts.surrogate_before, facts.surrogate_after, task, facts.surrogate_minibatch, k, improvement_reduce
            )
    elif facts.surrogate_minibatch is not None:
        raise ValueError("facts.surrogate_minibatch is given without facts.surrogate_before and surrogate_after")
    return TaskSignals.build(
        reward=reward,
        present=~np.isnan(reward),
        improvement=improvement,
        mean_abs_advantage=mean_abs,
        accuracy=accuracy,
        improvement_steps=steps,
    )


def with_stand_ins(facts: StepFacts, tasks: Sequence[ArrayLike], rewards: Sequence[ArrayLike]) -> StepFacts:
    """The facts with the rollouts standing in for prompts a pool's selection passed over (`Selection.stand_ins`,
    one (task, reward) pair of arrays per draw) added to the step's rollouts, so that J_k and accuracy measure the
    task, not the prompts the skip rule let through (docs/selective.md)."""
    if len(tasks) != len(rewards):
        raise ValueError(f"tasks and rewards must hold one array per draw each, got {len(tasks)} and {len(rewards)}")
    if not tasks:
        return facts
    if facts.rollout_task is None or facts.rollout_reward is None:
        raise ValueError("facts.rollout_task and rollout_reward are None: stand-ins join the step's own rollouts")
    task = np.concatenate([np.asarray(facts.rollout_task, dtype=np.int64), *(np.asarray(t) for t in tasks)])
    reward = np.concatenate([np.asarray(facts.rollout_reward, dtype=np.float64), *(np.asarray(r) for r in rewards)])
    if task.shape != reward.shape:
        raise ValueError(f"stand-in tasks and rewards must match in length, got {task.size} and {reward.size}")
    return replace(facts, rollout_task=task, rollout_reward=reward)


def check_needs(needs: Iterable[str], provided: Iterable[str], rule: str, backend: str) -> None:
    """Refuse a rule that needs a signal the backend does not measure, naming both."""
    wanted = set(needs)
    unknown = wanted - set(SIGNAL_NEEDS)
    if unknown:
        raise ValueError(f"rule {rule} declares needs {sorted(unknown)}; known signals are {list(SIGNAL_NEEDS)}")
    missing = wanted - set(provided) - CORE_SIGNALS
    if missing:
        raise ValueError(
            f"rule {rule} needs {sorted(missing)}, which backend {backend} does not measure (it provides "
            f"{sorted(provided)})"
        )
