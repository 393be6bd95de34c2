"""IWU on a common scale (beyond the paper): I_k and J_k divided by their own running spread across tasks.

The paper's score s_k = I_k + lam J_k adds two signals of unrelated size. How large I_k is depends on how it is
reduced (a task's mean or sum surrogate change), on the batch size and on the learning rate; J_k lies in [0, 1].
Under AdamW the size of the gradient does not matter, only the balance inside s_k, so with the mean I_k (about
n_k times smaller than the sum the paper's lam values were chosen for) J_k dominates from lam = 0.3 on and lam
stops trading anything (docs/signals.md, docs/benchmarks.md). Only deviations across tasks move the weights
(g_k = z_k (s_k - sum_j z_j s_j)), so each signal is divided by its spread across the present tasks, a
bias-corrected moving average of the cross-task variance:

    v_X <- decay v_X + (1 - decay) var_k(X_k),   sigma_X = sqrt(v_X / (1 - decay^t)),   X in {I, J}
    s_k = clip(I_k / sigma_I, -c, c) + lam J_k / sigma_J

lam is then the weight of a task's reward deficit against its lack of improvement in units of how much tasks
differ in each: lam = 1 weighs them alike, large lam tends to the reward-only (worst-task) update, small lam to
balanced improvement, whatever the reduction, batch size or task count. A step with fewer than two present tasks
measures no spread (the gradient is zero there anyway); before the first measurement the scale is 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.weighting.rules import IWURule, _checked_signals, _required

SCALED_DEFAULT_LAM = 2.0


class ScaledIWURule(IWURule):
    """IWU with I_k and J_k on a common scale (module docstring); IWURule's options plus spread_decay, the moving
    average's decay of the cross-task variances. improvement_clip, when given, is in units of sigma_I."""

    kind = "iwu-scaled"

    def __init__(
        self,
        num_tasks: int,
        lam: float = SCALED_DEFAULT_LAM,
        lr: float = 0.025,
        optimizer: str = "adamw",
        weight_decay: float = 1e-5,
        improvement_clip: float | None = None,
        spread_decay: float = 0.9,
    ) -> None:
        super().__init__(num_tasks, lam, lr, optimizer, weight_decay, improvement_clip)
        self.spread_decay = v.real_in_range("spread_decay", spread_decay, 0.0, 1.0, high_open=True)
        self._spread = (np.zeros(2), 0)  # (v_I, v_J), steps that measured them
        self._pending: tuple[NDArray[np.float64], int] | None = None

    def update(self, signals: TaskSignals) -> NDArray[np.float64]:
        s = _checked_signals(signals, self._k)
        improvement = _required("improvement", s.improvement, "ScaledIWURule")
        v.finite_array("signals.improvement at present tasks", improvement[s.present])
        self._pending = self._measured_spread(improvement, s)
        sigma_i, sigma_j = self._sigma(*self._pending)
        scaled = replace(s, reward=s.reward / sigma_j)
        return self._steps(scaled, (improvement / sigma_i)[None, :], rows_checked=True)

    def _measured_spread(self, improvement: NDArray[np.float64], s: TaskSignals) -> tuple[NDArray[np.float64], int]:
        """The moving averages after this step's cross-task variances (unchanged with fewer than 2 tasks)."""
        variance, steps = self._spread
        if s.present.sum() < 2:
            return variance, steps
        now = np.array([np.var(improvement[s.present]), np.var(s.reward[s.present])])
        return self.spread_decay * variance + (1.0 - self.spread_decay) * now, steps + 1

    def _sigma(self, variance: NDArray[np.float64], steps: int) -> tuple[float, float]:
        """sigma_I, sigma_J: the bias-corrected spreads; 1 where none was measured or it is 0."""
        if steps == 0:
            return 1.0, 1.0
        sigma = np.sqrt(variance / (1.0 - self.spread_decay**steps))
        return tuple(float(x) if x > 0 else 1.0 for x in sigma)  # type: ignore[return-value]

    def _reward_term(self, s: TaskSignals) -> tuple[NDArray[np.float64], NDArray[np.bool_], Any]:
        reward, scored, _ = super()._reward_term(s)
        return reward, scored, self._pending

    def _commit(self, reward_state: Any) -> None:
        if reward_state is not None:
            self._spread = reward_state

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "spread_decay": self.spread_decay}

    def _extra_state(self) -> dict[str, Any]:
        variance, steps = self._spread
        return {"spread_variance": variance.tolist(), "spread_steps": steps}

    def _load_extra(self, state: Mapping[str, Any]) -> Any:
        if "spread_variance" not in state or "spread_steps" not in state:
            raise ValueError("state lacks 'spread_variance' / 'spread_steps' (ScaledIWURule's moving spreads)")
        variance = v.finite_array("state['spread_variance']", state["spread_variance"], ndim=1)
        if variance.shape != (2,) or (variance < 0).any():
            raise ValueError(f"state['spread_variance'] must be 2 values >= 0, got {variance.tolist()}")
        return variance.copy(), v.positive_int("state['spread_steps']", state["spread_steps"], minimum=0)
