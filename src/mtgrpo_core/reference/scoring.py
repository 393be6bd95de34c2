"""Options of the IWU score that reproduce the paper's reference code (github rsshyam/MT-GRPO; docs/fidelity.md).

- `RewardTerm`: which per-task value lambda multiplies in s_k = I_k + lambda * (reward term), and which tasks
  the centred gradient covers. Default: the step's mean reward J_k over the present tasks (the paper's text).
  The reference code uses a moving average of accuracy and scores every task, present or not.
- `minibatch_improvement`: I_k per PPO mini-batch, summed over the task's samples in that mini-batch, for the
  reference code's one weight update per mini-batch (`ReferenceIWURule.update_minibatches`).
- `ReferenceIWURule`: the paper's IWU rule (`weighting.rules.IWURule`) with these options and the reference
  code's coupled weight decay; the reference presets (`reference.presets`) build it by name, "iwu-ref".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.weighting import functions as wf
from mtgrpo_core.weighting.rules import IWURule, _checked_signals

REWARD_SIGNALS: tuple[str, ...] = ("reward", "accuracy_ema")
DEFAULT_REWARD_DECAY = 0.5


class RewardTerm:
    """The reward term of the IWU score and the set of scored tasks; holds the accuracy average (rule state).

    signal "reward" (default): J_k of this step (`signals.reward`); only present tasks are scored.
    signal "accuracy_ema" (reference code, `bias_metric='batch_acc'`): a_k <- decay a_k + (1 - decay) acc_k at
        present tasks from `signals.accuracy`, a_k = 0 before the first observation (`wf.accuracy_average`).
    score_absent (reference code; only with "accuracy_ema"): a task without rollouts this step is scored too,
        with I_k = 0 and its average, instead of being left out of the gradient.
    """

    def __init__(
        self,
        num_tasks: int,
        signal: str = "reward",
        decay: float = DEFAULT_REWARD_DECAY,
        score_absent: bool = False,
    ) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self.signal = v.choice("reward_signal", signal, REWARD_SIGNALS)
        self.decay = v.real_in_range("reward_decay", decay, 0.0, 1.0, high_open=True)
        if not isinstance(score_absent, bool):
            raise TypeError(f"score_absent must be a bool, got {v._show(score_absent)}")
        if score_absent and self.signal != "accuracy_ema":
            raise ValueError(
                f"score_absent=True needs reward_signal='accuracy_ema' (an absent task has no reward J_k this "
                f"step), got reward_signal={self.signal!r}"
            )
        self.score_absent = score_absent
        self._average = np.zeros(self._k)

    @property
    def average(self) -> NDArray[np.float64]:
        """The accuracy moving average a_k (a copy; zeros unless signal is "accuracy_ema")."""
        return self._average.copy()

    def evaluate(self, signals: TaskSignals) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.float64]]:
        """(reward term per task, scored mask, new accuracy average) for one step; changes nothing (see commit)."""
        if self.signal == "reward":
            return np.where(signals.present, signals.reward, 0.0), signals.present.copy(), self._average.copy()
        if signals.accuracy is None:
            raise ValueError(
                "signals.accuracy is None, but IWURule(reward_signal='accuracy_ema') needs it; pass accuracy= to "
                "TaskSignals.build (step_signals always measures it)"
            )
        average = wf.accuracy_average(self._average, signals.accuracy, signals.present, self.decay)
        scored = np.ones(self._k, dtype=np.bool_) if self.score_absent else signals.present.copy()
        return average, scored, average

    def commit(self, average: NDArray[np.float64]) -> None:
        """Keep the average computed by `evaluate` (called once the rule's step succeeded)."""
        self._average = average

    def config(self) -> dict[str, Any]:
        """Constructor settings that differ from the defaults, under IWURule's argument names (so a rule state
        written before these options existed still loads)."""
        out: dict[str, Any] = {}
        if self.signal != "reward":
            out["reward_signal"] = self.signal
        if self.decay != DEFAULT_REWARD_DECAY:
            out["reward_decay"] = self.decay
        if self.score_absent:
            out["score_absent"] = True
        return out

    def state(self) -> dict[str, Any]:
        return {"accuracy_average": self._average.tolist()} if self.signal == "accuracy_ema" else {}

    def load(self, state: Mapping[str, Any]) -> NDArray[np.float64]:
        """The average stored in a rule state (checked: K finite values in [0, 1]); the caller commits it."""
        if self.signal != "accuracy_ema":
            return np.zeros(self._k)
        if "accuracy_average" not in state:
            raise ValueError("state lacks 'accuracy_average' (needed with reward_signal='accuracy_ema')")
        avg = v.finite_array("state['accuracy_average']", state["accuracy_average"], ndim=1)
        if avg.shape != (self._k,) or ((avg < 0) | (avg > 1)).any():
            raise ValueError(f"state['accuracy_average'] must hold {self._k} values in [0, 1], got {avg.tolist()}")
        return avg.copy()


class ReferenceIWURule(IWURule):
    """IWU as the paper's reference code runs it (docs/fidelity.md): IWURule's options plus
    coupled_decay=True: torch.optim.Adam's L2 form instead of AdamW's (weight_decay xi added to g before the
    moments; no effect with sgd); reward_signal, reward_decay, score_absent: the reward term (`RewardTerm`: J_k,
    or the accuracy moving average scoring every task); and `update_minibatches`, one weight update per PPO
    mini-batch. Needs signals.improvement (and signals.accuracy with reward_signal="accuracy_ema"). No task
    present: the logits, optimiser state and accuracy average stay unchanged.
    """

    kind = "iwu-ref"

    def __init__(
        self,
        num_tasks: int,
        lam: float = 0.2,
        lr: float = 0.025,
        optimizer: str = "adamw",
        weight_decay: float = 1e-5,
        improvement_clip: float | None = 0.2,
        coupled_decay: bool = False,
        reward_signal: str = "reward",
        reward_decay: float = DEFAULT_REWARD_DECAY,
        score_absent: bool = False,
    ) -> None:
        super().__init__(num_tasks, lam, lr, optimizer, weight_decay, improvement_clip)
        if not isinstance(coupled_decay, bool):
            raise TypeError(f"coupled_decay must be a bool, got {v._show(coupled_decay)}")
        self.coupled_decay = coupled_decay
        self.reward_term = RewardTerm(self._k, reward_signal, reward_decay, score_absent)

    def update_minibatches(self, signals: TaskSignals, improvements: ArrayLike) -> NDArray[np.float64]:
        """One step on xi per row of improvements (M, K), in order: the reference code takes one weight update
        per PPO mini-batch with that mini-batch's I_k (`minibatch_improvement`); the reward term is folded in
        once. `update(signals)` is M = 1 with signals.improvement. Entries of absent tasks are read as 0. All or
        nothing: a refused row leaves the rule unchanged."""
        s = _checked_signals(signals, self._k)
        rows = v.as_float_array("improvements", improvements, ndim=2)
        if rows.shape[0] == 0 or rows.shape[1] != self._k:
            raise ValueError(f"improvements must have shape (M >= 1, {self._k}), got {rows.shape}")
        return self._steps(s, rows, rows_checked=False)

    def _reward_term(self, s: TaskSignals) -> tuple[NDArray[np.float64], NDArray[np.bool_], Any]:
        return self.reward_term.evaluate(s)

    def _commit(self, reward_state: Any) -> None:
        self.reward_term.commit(reward_state)

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            **({"coupled_decay": True} if self.coupled_decay else {}),
            **self.reward_term.config(),
        }

    def _extra_state(self) -> dict[str, Any]:
        return self.reward_term.state()

    def _load_extra(self, state: Mapping[str, Any]) -> Any:
        return self.reward_term.load(state)
