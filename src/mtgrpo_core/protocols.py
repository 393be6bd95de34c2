"""The narrow interfaces shared by the core: per-task signals, the task-weighting rule protocol, and the paper's
reward protocol, one set of names for every backend: 1.0 for a correct answer, 0.1 for a wrong
answer in the right format, 0.0 otherwise. Accuracy means reward == CORRECT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v


@dataclass(frozen=True)
class TaskSignals:
    """What one training step observed, per task (arrays of length K).

    present: bool, True where the task had rollouts this step. Entries of the other arrays at absent tasks
        are ignored by every rule (they may be NaN); at present tasks they must be finite.
    reward: J_k, mean reward of ALL rollouts of task k this step, before any zero-gradient filtering.
    improvement: I_k (Eq. 8), surrogate after minus before the update; None if the caller has none.
    mean_abs_advantage: mean |A| over task k's samples (the SEC bandit's reward); None if not computed.
    accuracy: fraction of task k's rollouts that were correct (logged; no built-in rule reads it); None if absent.
    improvement_steps: (M, K) I_k of each of the step's M optimizer steps (PPO mini-batches), in order, for
        methods that update the weights once per mini-batch (the reference presets); None if not measured so.
    acceptance: the sampler's estimate, after this step, of the probability that a group of task k is
        informative (passes the filter): 1 - its filter rate. `Controller.end_step` fills it in for a rule that
        needs it (every backend; no trainer measures it); None otherwise.

    Build it with `mtgrpo_core.step_signals` from a step's facts (the one signal path every backend uses), or
    with `TaskSignals.build` from per-task values.

    A present task can have rollouts but no sample in the training batch (all its groups filtered, or a target
    of zero): then I_k and mean |A| are undefined and may be passed as NaN. `build` records them as 0 (no update
    touched the task; SEC's reference code also gives unsampled tasks 0) and lists them in `untrained`.
    """

    present: NDArray[np.bool_]
    reward: NDArray[np.float64]
    improvement: NDArray[np.float64] | None = None
    mean_abs_advantage: NDArray[np.float64] | None = None
    accuracy: NDArray[np.float64] | None = None
    untrained: tuple[int, ...] = ()
    improvement_steps: NDArray[np.float64] | None = None
    acceptance: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        """Refuse fields whose shapes do not match (a TaskSignals built directly, without `build`)."""
        present = np.asarray(self.present)
        if present.dtype != np.bool_ or present.ndim != 1:
            raise ValueError(f"present must be a 1-D bool array, got dtype {present.dtype} shape {present.shape}")
        for name in ("reward", "improvement", "mean_abs_advantage", "accuracy", "acceptance"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != present.shape:
                raise ValueError(
                    f"{name} must have shape {present.shape} (one per task, like present), got {np.shape(value)}"
                )
        steps = self.improvement_steps
        if steps is not None and (np.ndim(steps) != 2 or np.shape(steps)[1:] != present.shape):
            raise ValueError(f"improvement_steps must have shape (M, {present.shape[0]}), got {np.shape(steps)}")
        if any(not 0 <= k < present.shape[0] for k in self.untrained):
            raise ValueError(f"untrained must list task ids in [0, {present.shape[0]}), got {self.untrained}")

    @staticmethod
    def build(
        reward: ArrayLike,
        present: ArrayLike | None = None,
        improvement: ArrayLike | None = None,
        mean_abs_advantage: ArrayLike | None = None,
        accuracy: ArrayLike | None = None,
        improvement_steps: ArrayLike | None = None,
    ) -> TaskSignals:
        """Validate and build; `present` defaults to the tasks whose reward is not NaN."""
        r = v.as_float_array("reward", reward, ndim=1)
        if present is None:
            mask = ~np.isnan(r)
        else:
            mask = np.asarray(present)
            if mask.dtype != np.bool_ or mask.shape != r.shape:
                raise ValueError(f"present must be a bool array of shape {r.shape}, got {mask.dtype} {mask.shape}")

        v.finite_array("reward at present tasks", r[mask])
        untrained: set[int] = set()

        def per_sample(name: str, value: ArrayLike | None) -> NDArray[np.float64] | None:
            if value is None:
                return None
            arr = v.as_float_array(name, value, ndim=1).copy()
            if arr.shape != r.shape:
                raise ValueError(f"{name} must have shape {r.shape} (one per task), got {arr.shape}")
            if np.isinf(arr[mask]).any():
                k = int(np.flatnonzero(mask & np.isinf(arr))[0])
                raise ValueError(
                    f"{name} must be finite or NaN (task had no sample in the batch), got {arr[k]} at task {k}"
                )
            missing = mask & np.isnan(arr)
            untrained.update(int(k) for k in np.flatnonzero(missing))
            arr[missing] = 0.0
            return arr

        improvement_arr = per_sample("improvement", improvement)
        advantage_arr = per_sample("mean_abs_advantage", mean_abs_advantage)
        accuracy_arr = None
        if accuracy is not None:
            accuracy_arr = v.as_float_array("accuracy", accuracy, ndim=1)
            if accuracy_arr.shape != r.shape or not np.isfinite(accuracy_arr[mask]).all():
                raise ValueError(f"accuracy must hold {r.shape[0]} values, finite at present tasks, got {accuracy!r}")
        return TaskSignals(
            present=mask,
            reward=r,
            improvement=improvement_arr,
            mean_abs_advantage=advantage_arr,
            accuracy=accuracy_arr,
            untrained=tuple(sorted(untrained)),
            improvement_steps=None
            if improvement_steps is None
            else v.finite_array("improvement_steps", improvement_steps, ndim=2),
        )

    @property
    def num_tasks(self) -> int:
        return int(self.reward.shape[0])


SIGNAL_NEEDS: tuple[str, ...] = ("improvement", "mean_abs_advantage", "acceptance")
CORE_SIGNALS: frozenset[str] = frozenset({"acceptance"})  # filled in by the controller on every backend


@runtime_checkable
class WeightingRule(Protocol):
    """A task-weighting rule: weights z on the simplex, updated from per-task signals, with explicit state.

    `needs` names the optional TaskSignals fields its `update` reads (a subset of SIGNAL_NEEDS): the controller
    and every backend read it to decide what to measure (I_k costs an extra forward pass).
    """

    needs: frozenset[str]

    @property
    def num_tasks(self) -> int: ...

    @property
    def weights(self) -> NDArray[np.float64]:
        """Current task weights z: shape (K,), finite, >= 0, summing to 1. A copy."""
        ...

    def update(self, signals: TaskSignals) -> NDArray[np.float64]:
        """Take one step from this step's signals and return the new weights."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


CORRECT = 1.0
FORMATTED = 0.1
UNFORMATTED = 0.0
