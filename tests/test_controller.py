"""Controller (Algorithm 1 without the policy), method strings and the task registry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtgrpo_core.controller import Controller
from mtgrpo_core.methods import METHOD_NAMES, parse_method
from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.weighting.rules import FixedRule
from tests.sampler_sim import AcceptanceCaller

RATES = np.array([0.1, 0.3, 0.8])


def run_steps(ctrl: Controller, steps: int, start: int = 0) -> list[np.ndarray]:
    weights = []
    for step in range(start, start + steps):
        batch = AcceptanceCaller(RATES, step, first_key=1000 * step).run(ctrl.begin_step())
        reward = np.array([0.7, 0.4, 0.1]) + 0.01 * step
        signals = TaskSignals.build(
            reward=reward,
            accuracy=reward,  # read by the reference preset's rule (mt-grpo-ref), ignored by the others
            improvement=np.array([0.02, 0.01, 0.0]) if "improvement" in ctrl.needs else None,
            mean_abs_advantage=np.array([0.3, 0.5, 0.2]) if "mean_abs_advantage" in ctrl.needs else None,
            improvement_steps=[[0.01, 0.0, 0.0], [0.01, 0.01, 0.0]] if ctrl.minibatch_updates else None,
        )
        assert len(batch) <= 16
        weights.append(ctrl.end_step(signals))
    return weights


@pytest.mark.parametrize(
    "method",
    [
        "grpo",
        "dapo",
        "sec-grpo",
        "sec-dapo",
        "iwu-only:0.3",
        "rps-only",
        "mt-grpo:0.2",
        "mt-grpo-noinfl",
        "minimax",
        "minimax-reg:0.01",
        "mt-grpo-ref:0.2",
        "dapo-ref",
        "grpo-ref",
    ],
)
def test_every_method_runs_and_restores_identically(method: str) -> None:
    ctrl = Controller.from_method(method, num_tasks=3, batch_size=16, group_size=4, seed=3)
    run_steps(ctrl, 3)
    state = ctrl.state_dict()
    twin = Controller.from_method(method, num_tasks=3, batch_size=16, group_size=4, seed=99)
    twin.load_state_dict(state)
    a, b = run_steps(ctrl, 3, start=3), run_steps(twin, 3, start=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert ctrl.step == 6 and np.isclose(ctrl.weights.sum(), 1.0)


def test_method_strings_configure_rule_and_sampler() -> None:
    mt = Controller.from_method("mt-grpo:0.25", 3, 8, 4)
    assert mt.needs == {"improvement"} and mt.sampler.config.ratio_constraint and mt.rule.lam == 0.25  # type: ignore[attr-defined]
    dapo = Controller.from_method("dapo", 3, 8, 4)
    assert not dapo.sampler.config.ratio_constraint and dapo.sampler.config.filtering == "lenient"
    assert Controller.from_method("grpo", 3, 8, 1).sampler.config.filtering == "none"
    assert Controller.from_method("sec-dapo", 3, 8, 4).needs == {"mean_abs_advantage"}
    assert not Controller.from_method("mt-grpo-noinfl", 3, 8, 4).sampler.config.acceptance_aware
    assert Controller.from_method("mt-grpo", 3, 8, 4, planner="posterior").sampler.config.planner == "posterior"
    assert parse_method("minimax-reg").rule_kwargs == {"eta": 0.01}
    assert set(METHOD_NAMES) >= {"grpo", "dapo", "sec-grpo", "sec-dapo", "iwu-only", "rps-only", "mt-grpo"}
    ref = Controller.from_method("mt-grpo-ref:0.2", 3, 8, 4)
    assert ref.needs == {"improvement"} and ref.rule.coupled_decay  # type: ignore[attr-defined]
    assert json.dumps(ref.state_dict()) and parse_method("mt-grpo-ref").improvement_reduce == "sum"


@pytest.mark.parametrize(
    ("method", "match"),
    [
        ("mt-grop", "method must be one of"),
        ("mt-grpo:abc", "lam must be a number"),
        ("dapo:0.1", "takes no ':value'"),
        ("mt-grpo:-1", "must be in"),
        ("mt-grpo-ref:-1", "must be in"),
        ("dapo-ref:0.1", "takes no ':value'"),
    ],
)
def test_bad_method_strings(method: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Controller.from_method(method, 3, 8, 4)


def test_bad_controller_inputs() -> None:
    ctrl = Controller.from_method("mt-grpo", 3, 8, 4)
    with pytest.raises(ValueError, match="signals cover 2 tasks, expected 3"):
        ctrl.end_step(TaskSignals.build(reward=[0.1, 0.2], improvement=[0.0, 0.0]))
    with pytest.raises(ValueError, match="another K"):
        Controller.from_method("mt-grpo", 4, 8, 4).load_state_dict(ctrl.state_dict())
    with pytest.raises(ValueError, match="expected 'dapo'"):
        Controller.from_method("dapo", 3, 8, 4).load_state_dict(ctrl.state_dict())
    with pytest.raises(ValueError, match="rule has 2 tasks but the sampler has 3"):
        Controller(FixedRule(2, [0.5, 0.5]), ctrl.sampler)


def test_user_rule_returning_invalid_weights_names_the_step() -> None:
    class Broken(FixedRule):
        def update(self, signals: TaskSignals) -> np.ndarray:
            return np.array([0.9, 0.9, -0.8]) if signals.reward[0] > 0.5 else self.weights

    ctrl = Controller(Broken(3, [0.2, 0.3, 0.5]), Controller.from_method("rps-only", 3, 8, 4).sampler)
    ctrl.end_step(TaskSignals.build(reward=[0.1, 0.1, 0.1]))
    with pytest.raises(ValueError, match="invalid weights after step 1"):
        ctrl.end_step(TaskSignals.build(reward=[0.9, 0.1, 0.1]))


def test_signals_nan_improvement_marks_untrained_tasks() -> None:
    s = TaskSignals.build(reward=[0.5, 0.2, np.nan], improvement=[0.01, np.nan, np.nan])
    assert s.untrained == (1,) and s.improvement is not None and s.improvement[1] == 0.0
    assert not s.present[2]
    with pytest.raises(ValueError, match="improvement must be finite or NaN"):
        TaskSignals.build(reward=[0.5, 0.2], improvement=[0.01, np.inf])
    with pytest.raises(ValueError, match="reward at present tasks must be finite"):
        TaskSignals.build(reward=[0.5, np.nan], present=np.array([True, True]))


def test_ratio_preserving_methods_plan_lean_by_default_and_mt_grpo_paper_keeps_algorithm_2() -> None:
    for method in ("mt-grpo:0.2", "rps-only", "minimax", "minimax-reg:0.01"):
        config = Controller.from_method(method, 3, 8, 4).sampler.config
        assert (config.planner, config.carry_over, config.max_inflation, config.oversample) == ("joint", 1, 25.0, 6.0)
    for method in ("mt-grpo-paper:0.2", "mt-grpo-noinfl:0.2", "mt-grpo-ref:0.2"):
        config = Controller.from_method(method, 3, 8, 4).sampler.config
        assert config.planner.startswith("paper") and config.carry_over == 0 and config.oversample == 3.0
    on_policy = Controller.from_method("mt-grpo:0.2", 3, 8, 4, carry_over=0).sampler.config
    assert on_policy.planner == "joint" and on_policy.carry_over == 0
    assert Controller.from_method("dapo", 3, 8, 4).sampler.config.carry_over == 0
