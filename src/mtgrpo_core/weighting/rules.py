"""Task-weighting rules: one small class per rule, each satisfying `protocols.WeightingRule`.

Each rule holds explicit state (logits or bandit values, optimiser moments), validates its arguments and the
signals it receives, and calls the pure functions of `weighting.functions`. A step that would make the state
non-finite (signals near the float64 limit, |J| beyond about 1e307) is refused with a ValueError and leaves
the rule unchanged; nothing is clipped to make it fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.weighting import functions as wf

IWU_OPTIMIZERS = ("adamw", "sgd")
MINIMAX_DEFAULT_LR = 1.0


def _checked_signals(signals: Any, num_tasks: int) -> TaskSignals:
    """Refuse non-TaskSignals, another K, and non-finite rewards at present tasks."""
    if not isinstance(signals, TaskSignals):
        raise TypeError(f"signals must be a TaskSignals (TaskSignals.build), got {type(signals).__name__}")
    if signals.num_tasks != num_tasks:
        raise ValueError(f"signals has {signals.num_tasks} tasks, expected {num_tasks} (the rule's K)")
    if signals.present.dtype != np.bool_ or signals.present.shape != (num_tasks,):
        raise ValueError(f"signals.present must be a bool array of shape ({num_tasks},)")
    v.finite_array("signals.reward at present tasks", signals.reward[signals.present])
    return signals


def _required(name: str, value: NDArray[np.float64] | None, rule: str) -> NDArray[np.float64]:
    if value is None:
        raise ValueError(f"signals.{name} is None, but {rule} needs it; pass {name}= to TaskSignals.build")
    return value


def _finite_or_refuse(name: str, arr: NDArray[np.float64]) -> NDArray[np.float64]:
    if not np.isfinite(arr).all():
        raise ValueError(
            f"this step would make the {name} non-finite: the signals are too large for float64 "
            "(keep |reward|, |improvement| below about 1e307); the rule was left unchanged"
        )
    return arr


def _loaded_vector(state: Mapping[str, Any], key: str, num_tasks: int) -> NDArray[np.float64]:
    if key not in state:
        raise ValueError(f"state lacks {key!r}")
    arr = v.finite_array(f"state[{key!r}]", state[key], ndim=1)
    if arr.shape != (num_tasks,):
        raise ValueError(f"state[{key!r}] must have shape ({num_tasks},), got {arr.shape}")
    return arr.copy()


def _check_config(state: Mapping[str, Any], config: dict[str, Any]) -> None:
    got = state.get("config")
    if got != config:
        raise ValueError(f"state['config'] is {got!r}, expected {config!r}: build the rule with these settings")


class _LogitRule:
    """Shared read-only views of a rule that keeps logits xi and weights z = softmax(xi)."""

    _k: int
    _logits: NDArray[np.float64]
    _z: NDArray[np.float64]

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def weights(self) -> NDArray[np.float64]:
        return self._z.copy()

    @property
    def logits(self) -> NDArray[np.float64]:
        """Current logits xi (a copy)."""
        return self._logits.copy()


class IWURule(_LogitRule):
    """Improvement-aware weight update, the MT-GRPO rule (Subroutine 1), with the paper's options only.

    s_k = clip(I_k, -c, c) + lam J_k;  g_k = z_k (s_k - sum_j z_j s_j);  a step on xi;  z = softmax(xi).
    optimizer "adamw" (default, the paper's experiments: lr 0.025, weight decay 1e-5) or "sgd" (the
    subroutine's plain step xi <- xi - lr g, with the same decoupled decay xi *= 1 - lr weight_decay; pass
    weight_decay=0 for the paper's exact step). improvement_clip None disables clipping. Needs
    signals.improvement. No task present: the logits and optimiser state stay unchanged. The reference code's
    variant (accuracy moving average, coupled decay, one update per mini-batch) is
    `reference.scoring.ReferenceIWURule`.
    """

    kind = "iwu"
    needs = frozenset({"improvement"})

    def __init__(
        self,
        num_tasks: int,
        lam: float = 0.2,
        lr: float = 0.025,
        optimizer: str = "adamw",
        weight_decay: float = 1e-5,
        improvement_clip: float | None = 0.2,
    ) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self.lam = v.real_in_range("lam", lam, 0.0)
        self.lr = v.real_in_range("lr", lr, 0.0, low_open=True)
        self.optimizer = v.choice("optimizer", optimizer, IWU_OPTIMIZERS)
        self.weight_decay = v.real_in_range("weight_decay", weight_decay, 0.0)
        if self.lr * self.weight_decay >= 1.0:
            raise ValueError(f"lr * weight_decay must be < 1, got {self.lr} * {self.weight_decay}")
        self.improvement_clip = (
            None
            if improvement_clip is None
            else v.real_in_range("improvement_clip", improvement_clip, 0.0, low_open=True)
        )
        self.coupled_decay = False  # the reference variant's torch.optim.Adam L2 form
        self._logits = np.zeros(self._k)
        self._adam = wf.AdamWState.zeros(self._k)
        self._z = wf.stable_softmax(self._logits)

    def update(self, signals: TaskSignals) -> NDArray[np.float64]:
        s = _checked_signals(signals, self._k)
        improvement = _required("improvement", s.improvement, "IWURule")
        v.finite_array("signals.improvement at present tasks", improvement[s.present])
        return self._steps(s, improvement[None, :], rows_checked=True)

    def _reward_term(self, s: TaskSignals) -> tuple[NDArray[np.float64], NDArray[np.bool_], Any]:
        """(what lam multiplies, the tasks the gradient covers, state to commit after the step): J_k over the
        present tasks (the paper's text)."""
        return np.where(s.present, s.reward, 0.0), s.present.copy(), None

    def _commit(self, reward_state: Any) -> None:
        """Keep what `_reward_term` computed once the step succeeded (nothing for the paper's J_k)."""

    def _lam(self) -> float:
        """The lam of the next step (constant here)."""
        return self.lam

    def _steps(self, s: TaskSignals, rows: NDArray[np.float64], rows_checked: bool) -> NDArray[np.float64]:
        """The steps of `update_minibatches` on checked signals and rows (M, K). The rule's own state (finite
        logits and moments of shape (K,)) is not checked again; what a step computes (score, gradient, logits) is,
        and the settings are, once, where the step first reads them."""
        reward, scored, reward_state = self._reward_term(s)
        if not rows_checked:
            v.finite_array("improvements at present tasks", rows[:, s.present])
        if not s.present.any():
            return self.weights
        lam = v.real_in_range("lam", self._lam(), 0.0)
        settings: tuple[float, ...] | None = None
        logits, adam = self._logits, self._adam
        # Absent tasks trained no sample: I_k = 0 (their entries may be NaN; the gradient ignores them unless the
        # reference variant scores absent tasks, and then I_k = 0 is the reference code's value).
        for improvement in np.where(s.present, rows, 0.0):
            if self.improvement_clip is not None:
                improvement = np.clip(improvement, -self.improvement_clip, self.improvement_clip)
            score = np.asarray(improvement + lam * reward, dtype=np.float64)  # wf.iwu_score
            z = wf._softmax(logits)
            if not np.isfinite(score[scored]).all():
                wf.iwu_gradient(z, score, scored)  # refuses the score, naming it
            g = _finite_or_refuse("gradient", wf._centred(z, score, scored))
            if self.optimizer == "sgd":
                if settings is None:
                    lr = v.real_in_range("lr", self.lr, 0.0, low_open=True)
                    settings = (lr, v.real_in_range("eta", self.lr * self.weight_decay, 0.0, 1.0, high_open=True))
                logits = wf._regularised(logits, g, settings[0], settings[1])
            else:
                if settings is None:
                    settings = wf._adamw_settings(self.lr, self.weight_decay)
                lr_, wd, b1, b2, eps = settings
                logits, adam = wf._adamw(logits, g, adam, lr_, wd, b1, b2, eps, not self.coupled_decay)
            logits = _finite_or_refuse("logits", logits)
        self._logits, self._adam = logits, adam
        self._commit(reward_state)
        self._z = wf._softmax(self._logits)
        return self.weights

    def _config(self) -> dict[str, Any]:
        return {
            "lam": self.lam,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "weight_decay": self.weight_decay,
            "improvement_clip": self.improvement_clip,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_tasks": self._k,
            "config": self._config(),
            "logits": self._logits.tolist(),
            "adam_step": self._adam.step,
            "adam_exp_avg": self._adam.exp_avg.tolist(),
            "adam_exp_avg_rms": self._adam.exp_avg_rms.tolist(),
            **self._extra_state(),
        }

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, state: Mapping[str, Any]) -> Any:
        """What `_extra_state` wrote, checked, to `_commit` once the whole state is accepted."""
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, self.kind, self._k)
        _check_config(state, self._config())
        logits = _loaded_vector(state, "logits", self._k)
        step = v.positive_int("state['adam_step']", state.get("adam_step"), minimum=0)
        m = _loaded_vector(state, "adam_exp_avg", self._k)
        rms = _loaded_vector(state, "adam_exp_avg_rms", self._k)
        if (rms < 0).any():
            raise ValueError(f"state['adam_exp_avg_rms'] must be >= 0, got minimum {float(rms.min())!r}")
        extra = self._load_extra(state)
        self._logits, self._adam = logits, wf.AdamWState(step, m, rms)
        self._commit(extra)
        self._z = wf.stable_softmax(self._logits)


class MinimaxRule(_LogitRule):
    """Reward-only worst-task update: Eq. 6-7 (eta = 0) or its regularised form, Subroutine 2 (eta > 0).

    g_k = z_k (J_k - sum_j z_j J_j);  xi <- xi - lr g - eta xi;  z = softmax(xi).
    Plain gradient steps. The paper gives no step size for these rules; lr defaults to 1.0 (our choice, see
    docs/weighting.md). With eta = 0 weight collapses onto the current worst task (Figure 2).
    No task present: the logits stay unchanged (no shrinkage either).
    """

    kind = "minimax"
    needs: frozenset[str] = frozenset()

    def __init__(self, num_tasks: int, lr: float = MINIMAX_DEFAULT_LR, eta: float = 0.0) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self.lr = v.real_in_range("lr", lr, 0.0, low_open=True)
        self.eta = v.real_in_range("eta", eta, 0.0, 1.0, high_open=True)
        self._logits = np.zeros(self._k)
        self._z = wf.stable_softmax(self._logits)

    def update(self, signals: TaskSignals) -> NDArray[np.float64]:
        s = _checked_signals(signals, self._k)
        if not s.present.any():
            return self.weights
        g = _finite_or_refuse("gradient", wf.minimax_gradient(self._z, s.reward, s.present))
        self._logits = _finite_or_refuse("logits", wf.regularised_step(self._logits, g, self.lr, self.eta))
        self._z = wf.stable_softmax(self._logits)
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_tasks": self._k,
            "config": {"lr": self.lr, "eta": self.eta},
            "logits": self._logits.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, self.kind, self._k)
        _check_config(state, {"lr": self.lr, "eta": self.eta})
        self._logits = _loaded_vector(state, "logits", self._k)
        self._z = wf.stable_softmax(self._logits)


class UniformRule:
    """Uniform weights z_k = 1/K at every step (the GRPO and DAPO baselines)."""

    kind = "uniform"
    needs: frozenset[str] = frozenset()

    def __init__(self, num_tasks: int) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def weights(self) -> NDArray[np.float64]:
        return np.full(self._k, 1.0 / self._k)

    def update(self, signals: TaskSignals) -> NDArray[np.float64]:
        _checked_signals(signals, self._k)
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_tasks": self._k}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, self.kind, self._k)


class FixedRule:
    """Fixed weights given at construction (e.g. the "RPS with fixed uniform z" ablation).

    weights: K values on the simplex (sum within 1e-6 of 1); they are divided by their sum once so that the
    rounding left by the caller does not persist.
    """

    kind = "fixed"
    needs: frozenset[str] = frozenset()

    def __init__(self, num_tasks: int, weights: ArrayLike) -> None:
        z = v.simplex("weights", weights, v.positive_int("num_tasks", num_tasks))
        self._z: NDArray[np.float64] = z / z.sum()

    @property
    def num_tasks(self) -> int:
        return int(self._z.shape[0])

    @property
    def weights(self) -> NDArray[np.float64]:
        return self._z.copy()

    def update(self, signals: TaskSignals) -> NDArray[np.float64]:
        _checked_signals(signals, self.num_tasks)
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_tasks": self.num_tasks, "weights": self._z.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, self.kind, self.num_tasks)
        if not np.array_equal(_loaded_vector(state, "weights", self.num_tasks), self._z):
            raise ValueError(
                f"state['weights'] is {state['weights']!r}, expected {self._z!r}: "
                "a FixedRule's weights are its configuration"
            )


class SECRule:
    """Self-Evolving Curriculum bandit baseline (Chen et al. 2025), as used for SEC-GRPO / SEC-DAPO.

    Q_k <- (1 - alpha) Q_k + alpha r_k with r_k = task k's mean |advantage| this step (absent tasks get
    r_k = 0, as in the reference code); z = softmax(Q / temperature). Q starts at 0 (uniform weights).
    Needs signals.mean_abs_advantage (>= 0 at present tasks). No task present: Q stays unchanged.
    """

    kind = "sec"
    needs = frozenset({"mean_abs_advantage"})

    def __init__(self, num_tasks: int, alpha: float = 0.5, temperature: float = 0.2) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self.alpha = v.real_in_range("alpha", alpha, 0.0, 1.0, low_open=True)
        self.temperature = v.real_in_range("temperature", temperature, 0.0, low_open=True)
        self._q = np.zeros(self._k)
        self._z = wf.stable_softmax(self._q, self.temperature)

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def weights(self) -> NDArray[np.float64]:
        return self._z.copy()

    @property
    def q_values(self) -> NDArray[np.float64]:
        """Current bandit values Q (a copy)."""
        return self._q.copy()

    def update(self, signals: TaskSignals) -> NDArray[np.float64]:
        s = _checked_signals(signals, self._k)
        adv = _required("mean_abs_advantage", s.mean_abs_advantage, "SECRule")
        present_adv = v.finite_array("signals.mean_abs_advantage at present tasks", adv[s.present])
        if (present_adv < 0).any():
            raise ValueError(
                f"signals.mean_abs_advantage must be >= 0 at present tasks, got {float(present_adv.min())!r}"
            )
        if not s.present.any():
            return self.weights
        r = np.where(s.present, adv, 0.0)
        self._q = _finite_or_refuse("bandit values", wf.sec_update(self._q, r, self.alpha))
        self._z = wf.stable_softmax(self._q, self.temperature)
        return self.weights

    def _config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "temperature": self.temperature}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_tasks": self._k, "config": self._config(), "q_values": self._q.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, self.kind, self._k)
        _check_config(state, self._config())
        self._q = _loaded_vector(state, "q_values", self._k)
        self._z = wf.stable_softmax(self._q, self.temperature)
