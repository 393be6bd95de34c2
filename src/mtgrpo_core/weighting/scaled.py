"""IWU variants beyond the paper: `ScaledIWURule` puts I_k and J_k on a common scale; `FamilyIWURule` weights task
families, then the tasks within them.

IWU on a common scale: I_k and J_k divided by their own running spread across tasks.

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

A lam ramp (lam_start, lam_ramp) moves lam linearly from lam_start to lam over the first lam_ramp weight updates,
then holds it: average progress first, the worst task later (docs/weighting.md, measured in docs/benchmarks.md).

Weights that count generation (cost_tilt kappa in [0, 1]): a task's informative group costs 1 / a_k generated
groups, a_k the sampler's acceptance estimate (TaskSignals.acceptance). The rule's own weights u = softmax(xi) are
tilted before the sampler sees them,

    z_k = u_k a_k^kappa / sum_j u_j a_j^kappa,

so that the generation spent on task k, proportional to z_k / a_k, goes as u_k a_k^(kappa - 1): kappa = 0 is the
paper (u splits the trained groups), kappa = 1 lets u split the generated groups. a_k is floored at 0.01 (a task
the filter has rejected every time keeps a share); a task not present keeps its last a_k, 1 before any.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.weighting.rules import IWURule, _check_config, _checked_signals, _required

SCALED_DEFAULT_LAM = 2.0
ACCEPTANCE_FLOOR = 0.01  # the cost tilt's floor on a_k


class ScaledIWURule(IWURule):
    """IWU with I_k and J_k on a common scale (module docstring); IWURule's options plus spread_decay, the moving
    average's decay of the cross-task variances, and an optional lam ramp: lam_start (None: lam throughout) moving
    linearly to lam over lam_ramp weight updates, and cost_tilt (module docstring). improvement_clip, when given,
    is in units of sigma_I."""

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
        lam_start: float | None = None,
        lam_ramp: int = 0,
        cost_tilt: float = 0.0,
    ) -> None:
        super().__init__(num_tasks, lam, lr, optimizer, weight_decay, improvement_clip)
        self.spread_decay = v.real_in_range("spread_decay", spread_decay, 0.0, 1.0, high_open=True)
        self.lam_start = None if lam_start is None else v.real_in_range("lam_start", lam_start, 0.0)
        self.lam_ramp = v.positive_int("lam_ramp", lam_ramp, minimum=0)
        if (self.lam_start is None) != (self.lam_ramp == 0):
            raise ValueError(
                f"lam_start and lam_ramp go together (lam moves from lam_start to lam over lam_ramp >= 1 weight "
                f"updates), got lam_start={lam_start!r}, lam_ramp={lam_ramp!r}"
            )
        self.cost_tilt = v.real_in_range("cost_tilt", cost_tilt, 0.0, 1.0)
        self.needs = frozenset({"improvement", "acceptance"} if self.cost_tilt else {"improvement"})
        self._spread = (np.zeros(2), 0)  # (v_I, v_J), steps that measured them
        self._updates = 0  # weight updates made: the ramp's clock
        self._acceptance = np.ones(self._k)  # a_k of the tilt, last measured
        self._pending: tuple[NDArray[np.float64], int, int, NDArray[np.float64]] | None = None

    @property
    def weights(self) -> NDArray[np.float64]:
        if not self.cost_tilt:
            return self._z.copy()
        tilted = self._z * np.power(np.maximum(self._acceptance, ACCEPTANCE_FLOOR), self.cost_tilt)
        return np.asarray(tilted / tilted.sum(), dtype=np.float64)

    def update(self, signals: TaskSignals) -> NDArray[np.float64]:
        s = _checked_signals(signals, self._k)
        improvement = _required("improvement", s.improvement, "ScaledIWURule")
        v.finite_array("signals.improvement at present tasks", improvement[s.present])
        acceptance = self._acceptance
        if self.cost_tilt:
            measured = _required("acceptance", s.acceptance, "ScaledIWURule with cost_tilt")
            acceptance = np.where(s.present, measured, self._acceptance)
            _check_rates("signals.acceptance at present tasks", acceptance, self._k)
        self._pending = (*self._measured_spread(improvement, s), self._updates + 1, acceptance)
        sigma_i, sigma_j = self._sigma(*self._pending[:2])
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
            variance, steps, self._updates, self._acceptance = reward_state
            self._spread = (variance, steps)

    def _lam(self) -> float:
        """lam, or on the ramp lam_start + (lam - lam_start) min(t / lam_ramp, 1) at weight update t."""
        if self.lam_start is None:
            return self.lam
        return self.lam_start + (self.lam - self.lam_start) * min(self._updates / self.lam_ramp, 1.0)

    def _config(self) -> dict[str, Any]:
        ramp = {} if self.lam_start is None else {"lam_start": self.lam_start, "lam_ramp": self.lam_ramp}
        tilt = {"cost_tilt": self.cost_tilt} if self.cost_tilt else {}
        return {**super()._config(), "spread_decay": self.spread_decay, **ramp, **tilt}

    def _extra_state(self) -> dict[str, Any]:
        variance, steps = self._spread
        ramp = {} if self.lam_start is None else {"lam_updates": self._updates}
        tilt = {"acceptance": self._acceptance.tolist()} if self.cost_tilt else {}
        return {"spread_variance": variance.tolist(), "spread_steps": steps, **ramp, **tilt}

    def _load_extra(self, state: Mapping[str, Any]) -> Any:
        if "spread_variance" not in state or "spread_steps" not in state:
            raise ValueError("state lacks 'spread_variance' / 'spread_steps' (ScaledIWURule's moving spreads)")
        variance = v.finite_array("state['spread_variance']", state["spread_variance"], ndim=1)
        if variance.shape != (2,) or (variance < 0).any():
            raise ValueError(f"state['spread_variance'] must be 2 values >= 0, got {variance.tolist()}")
        steps = v.positive_int("state['spread_steps']", state["spread_steps"], minimum=0)
        updates, acceptance = 0, np.ones(self._k)
        if self.lam_start is not None:
            if "lam_updates" not in state:
                raise ValueError("state lacks 'lam_updates' (ScaledIWURule's lam ramp: weight updates made)")
            updates = v.positive_int("state['lam_updates']", state["lam_updates"], minimum=0)
        if self.cost_tilt:
            if "acceptance" not in state:
                raise ValueError("state lacks 'acceptance' (ScaledIWURule's cost tilt: the last a_k per task)")
            acceptance = _check_rates("state['acceptance']", state["acceptance"], self._k)
        return variance.copy(), steps, updates, acceptance.copy()


def _check_rates(name: str, value: Any, num_tasks: int) -> NDArray[np.float64]:
    """num_tasks finite values in [0, 1], refused naming `name`."""
    rates = v.finite_array(name, value, ndim=1)
    if rates.shape != (num_tasks,) or (rates < 0).any() or (rates > 1).any():
        raise ValueError(f"{name} must be {num_tasks} values in [0, 1], got {rates.tolist()}")
    return rates


class FamilyIWURule:
    """IWU over task families, then within each family (beyond the paper; issue 20 item 3, docs/weighting.md).

    With many tasks each task has a few groups a step. The family rule splits the weight in two levels:

        w = IWU over the F families, on family-pooled signals  J_f = mean_{k in f} J_k,  I_f = mean_{k in f} I_k
        u^f = IWU over the tasks of family f, on their own J_k, I_k (gradient centred within the family)
        z_k = w_f(k) ((1 - within) / n_f + within u^f_k)

    Each level is an `IWURule` with the same options (lam, lr, optimizer, weight_decay, improvement_clip), means
    over the tasks present this step. within in [0, 1] is how far a family's weight follows its own IWU (1) rather
    than spreading evenly over its n_f tasks (0). families: one label (int or str) per task, e.g. the suite's.
    With one task per family, or one family and within = 1, this is `IWURule` step for step.
    """

    kind = "iwu-family"
    needs = frozenset({"improvement"})

    def __init__(
        self,
        num_tasks: int,
        families: Sequence[int | str] | None = None,
        lam: float = 0.2,
        lr: float = 0.025,
        optimizer: str = "adamw",
        weight_decay: float = 1e-5,
        improvement_clip: float | None = 0.2,
        within: float = 1.0,
    ) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self._family = family_index(families, self._k)
        self.within = v.real_in_range("within", within, 0.0, 1.0)
        options = {"lam": lam, "lr": lr, "optimizer": optimizer, "weight_decay": weight_decay}
        options["improvement_clip"] = improvement_clip
        sizes = np.bincount(self._family)
        self._top = IWURule(len(sizes), **options)  # type: ignore[arg-type]
        self._members = [np.flatnonzero(self._family == f) for f in range(len(sizes))]
        self._inner = [IWURule(len(m), **options) for m in self._members]  # type: ignore[arg-type]

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def families(self) -> NDArray[np.int64]:
        """Each task's family index, numbered in order of first appearance (a copy)."""
        return self._family.copy()

    @property
    def weights(self) -> NDArray[np.float64]:
        w, z = self._top.weights, np.zeros(self._k)
        for f, (members, inner) in enumerate(zip(self._members, self._inner, strict=True)):
            z[members] = w[f] * ((1.0 - self.within) / len(members) + self.within * inner.weights)
        return z

    def update(self, signals: TaskSignals) -> NDArray[np.float64]:
        s = _checked_signals(signals, self._k)
        improvement = _required("improvement", s.improvement, "FamilyIWURule")
        v.finite_array("signals.improvement at present tasks", improvement[s.present])
        saved = self.state_dict()
        try:
            self._top.update(family_signals(s.reward, improvement, s.present, self._family))
            for members, inner in zip(self._members, self._inner, strict=True):
                inner.update(TaskSignals.build(s.reward[members], s.present[members], improvement[members]))
        except ValueError:
            self.load_state_dict(saved)  # a refused step leaves the rule unchanged
            raise
        return self.weights

    def _config(self) -> dict[str, Any]:
        return {**self._top._config(), "within": self.within, "families": self._family.tolist()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_tasks": self._k,
            "config": self._config(),
            "families": self._top.state_dict(),
            "tasks": [inner.state_dict() for inner in self._inner],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, self.kind, self._k)
        _check_config(state, self._config())
        inner = state.get("tasks")
        if not isinstance(inner, list) or len(inner) != len(self._inner):
            raise ValueError(f"state['tasks'] must list {len(self._inner)} per-family states, got {inner!r:.80}")
        top, rules = copy.deepcopy(self._top), copy.deepcopy(self._inner)
        top.load_state_dict(state.get("families", {}))
        for rule, part in zip(rules, inner, strict=True):
            rule.load_state_dict(part)
        self._top, self._inner = top, rules


def family_index(families: Any, num_tasks: int) -> NDArray[np.int64]:
    """Each task's family as an index 0..F-1 in order of first appearance; `families` holds one label (int or
    str) per task. Refuses None, another length and other label types, naming `families`."""
    if families is None:
        raise ValueError(
            "families is None: the family rule (iwu-family, mt-grpo-family) needs each task's family, one label "
            f"per task ({num_tasks}); the simulator takes them from the suite (a recipe's family_size or a "
            "'families' field); elsewhere pass rule_kwargs={'families': [...]}"
        )
    if isinstance(families, str | bytes) or not isinstance(families, Sequence | np.ndarray):
        raise TypeError(f"families must be a sequence of {num_tasks} labels (int or str), got {families!r:.80}")
    labels = list(families)
    if len(labels) != num_tasks:
        raise ValueError(f"families must hold one label per task ({num_tasks}), got {len(labels)}")
    bad = [x for x in labels if isinstance(x, bool) or not isinstance(x, int | str | np.integer)]
    if bad:
        raise TypeError(f"families must hold int or str labels, got {bad[0]!r} of type {type(bad[0]).__name__}")
    order: dict[Any, int] = {}
    return np.array([order.setdefault(x.item() if isinstance(x, np.integer) else x, len(order)) for x in labels])


def family_signals(
    reward: NDArray[np.float64], improvement: NDArray[np.float64], present: NDArray[np.bool_], family: NDArray[np.int64]
) -> TaskSignals:
    """Family-pooled signals: J_f and I_f the means of J_k and I_k over family f's present tasks; a family is
    present when any of its tasks is. Shapes (K,) in, (F,) out."""
    count = np.bincount(family, weights=present.astype(np.float64))
    reward_f, improvement_f = (np.bincount(family, weights=np.where(present, x, 0.0)) for x in (reward, improvement))
    return TaskSignals.build(reward_f / np.maximum(count, 1.0), count > 0, improvement_f / np.maximum(count, 1.0))
