"""A guard against tasks that yield no signal (beyond the paper).

A task whose prompts never give an informative group (always all-wrong, say) gets a low J_k, so a worst-task rule
keeps raising its weight, and the ratio-preserving sampler keeps regenerating for it until the round budget is
spent: every step then generates many times the batch and trains on a short batch. The guard stops that:

- Evidence: per task, the number of groups generated since its last informative group (`dry`).
- A task is barren when `dry` reaches `window` = ceil(log(miss) / log(1 - floor)) groups: the chance that a task
  whose informative rate is `floor` (default 2%: hard, but still signal) shows that many uninformative groups in
  a row is `miss` (default 0.1%). With the defaults the window is 342 groups. A 2% task has a dry run that long
  about once per 50,000 of its groups; when it happens the probes below bring it back within a few steps.
- A barren task is sampled at weight 0 (its share of the batch goes to the other tasks in proportion to their
  weights) except for `probe` groups per step, requested once per step, never inflated or resampled (default: the
  uniform share ceil(B / K), what plain GRPO would spend on it); one informative probe clears it, and informative
  probes may fill the batch. The weighting rule sees a barren task as absent (its weight stops moving on the low
  J_k), and the batch report names it.
- If every task is barren the guard steps aside (nothing to redistribute to); the round budget then bounds the
  step as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v


def guard_window(floor: float, miss: float) -> int:
    """Uninformative groups in a row after which a task is barren: ceil(log(miss) / log(1 - floor))."""
    f = v.real_in_range("floor", floor, 0.0, 1.0, low_open=True, high_open=True)
    m = v.real_in_range("miss", miss, 0.0, 1.0, low_open=True, high_open=True)
    return max(1, math.ceil(math.log(m) / math.log1p(-f)))


class NoSignalGuard:
    """Per-task dry runs and the barren set they imply; explicit, JSON-native state."""

    KIND = "no_signal_guard"

    def __init__(self, num_tasks: int, floor: float = 0.02, miss: float = 1e-3, probe: int = 1) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self.window = guard_window(floor, miss)
        self.probe = v.positive_int("probe", probe, minimum=0)
        self._dry = np.zeros(self._k, dtype=np.int64)

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def barren(self) -> NDArray[np.bool_]:
        """Tasks sampled only by probes now; none when every task would be (the guard steps aside)."""
        barren = self._dry >= self.window
        return barren if not barren.all() else np.zeros(self._k, dtype=np.bool_)

    def sampling_weights(self, weights: NDArray[np.float64]) -> NDArray[np.float64]:
        """z with barren tasks at 0 and the rest renormalised (unchanged when nothing is barren or the rest has
        no weight)."""
        barren = self.barren
        if not barren.any():
            return weights
        kept = np.where(barren, 0.0, weights)
        total = kept.sum()
        return weights if total <= 0 else kept / total

    def probes(self) -> NDArray[np.int64]:
        """Groups to request from each task beyond the plan: `probe` for barren tasks, 0 otherwise."""
        return np.where(self.barren, self.probe, 0).astype(np.int64)

    def update(self, generated: NDArray[np.int64], informative: NDArray[np.int64]) -> None:
        """Fold in one step: a task with an informative group restarts its dry run, others extend it."""
        self._dry = np.where(informative > 0, 0, self._dry + generated)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "num_tasks": self._k, "window": self.window, "dry": self._dry.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, self.KIND, self._k)
        if state.get("window") != self.window:
            raise ValueError(f"state['window'] is {state.get('window')!r}, expected {self.window} (other settings)")
        dry = v.int_array("state['dry']", state.get("dry", []), ndim=1)
        if dry.shape != (self._k,) or (dry < 0).any():
            raise ValueError(f"state['dry'] must be {self._k} non-negative ints, got {dry.tolist()}")
        self._dry = dry.copy()
