"""Bad input to the core is refused at the earliest point with the argument, the value and what was expected,
and a refused state load leaves the object unchanged (issue 10's list)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mtgrpo_core import Controller, IWURule, SamplerConfig, TaskSignals, group_advantages, ragged_group_advantages


def _trained_controller() -> Controller:
    ctrl = Controller.from_method("mt-grpo-paper:0.2", 3, 8, 4, seed=1)
    for _ in range(2):
        builder = ctrl.begin_step()
        n = 0
        while (request := builder.next_request()) is not None:
            tasks = np.repeat(np.arange(3), request.counts)
            rewards = np.tile([1.0, 0.0, 0.1, 1.0], (tasks.shape[0], 1))
            builder.report_arrays(tasks, np.arange(n, n + tasks.shape[0]), rewards=rewards)
            n += tasks.shape[0]
        builder.finish()
        ctrl.end_step(TaskSignals.build(reward=[0.2, 0.5, 0.8], improvement=[0.01, -0.02, 0.0]))
    return ctrl


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(state: dict[str, Any]) -> None:
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda state: state.pop(key)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (_set(("step",), -1), r"state\['step'\] must be >= 0, got -1"),
        (_set(("step",), 1.5), r"state\['step'\] must be an int, got 1.5"),
        (_drop("step"), r"state lacks \['step'\]"),
        (_drop("sampler"), r"state lacks \['sampler'\]"),
        (_set(("sampler", "seed"), -3), r"state\['seed'\] must be >= 0, got -3"),
        (_set(("sampler", "estimator", "alpha"), 1.5), r"state\['alpha'\] must be in \(0.0, 1.0\], got 1.5"),
        (_set(("sampler", "estimator", "rho"), [0.1, float("nan"), 0.2]), r"state\['rho'\] must be finite"),
        (_set(("sampler", "estimator", "rho"), [0.1, 1.5, 0.2]), r"state\['rho'\] must hold values in \[0, 1.0\]"),
        (_set(("sampler", "estimator", "rho"), [0.1, 0.2]), r"state\['rho'\]"),
        (_set(("rule", "logits"), [0.0, 1.0]), r"state\['logits'\] must have shape \(3,\)"),
    ],
)
def test_a_refused_controller_state_leaves_the_controller_unchanged(
    mutate: Callable[[dict[str, Any]], None], match: str
) -> None:
    ctrl = _trained_controller()
    other = Controller.from_method("mt-grpo-paper:0.2", 3, 8, 4, seed=1)
    state = json.loads(json.dumps(ctrl.state_dict()))
    state["rule"]["logits"] = [5.0, -5.0, 0.0]  # the rule part alone would load: it must not stay behind
    mutate(state)
    before = other.state_dict()
    with pytest.raises((ValueError, TypeError), match=match):
        other.load_state_dict(state)
    assert other.state_dict() == before


def test_task_signals_built_directly_with_wrong_lengths_are_refused() -> None:
    present = np.array([True, True, True])
    with pytest.raises(ValueError, match=r"improvement must have shape \(3,\) \(one per task, like present\)"):
        TaskSignals(present=present, reward=np.zeros(3), improvement=np.zeros(2))
    with pytest.raises(ValueError, match=r"reward must have shape \(3,\)"):
        TaskSignals(present=present, reward=np.zeros(4))
    with pytest.raises(ValueError, match="present must be a 1-D bool array"):
        TaskSignals(present=np.ones(3), reward=np.zeros(3))
    with pytest.raises(ValueError, match=r"untrained must list task ids in \[0, 3\), got \(5,\)"):
        TaskSignals(present=present, reward=np.zeros(3), untrained=(5,))
    rule = IWURule(3)
    ok = TaskSignals(present=present, reward=np.full(3, 0.5), improvement=np.zeros(3))
    rule.update(ok)


def test_huge_oversampling_is_refused_before_any_request() -> None:
    with pytest.raises(ValueError, match=r"oversample \* batch_size must be <= 2147483647 prompts in one round"):
        SamplerConfig(8, 4, oversample=1e19)
    with pytest.raises(ValueError, match=r"max_inflation \* batch_size must be <= 2147483647"):
        SamplerConfig(8, 4, max_inflation=1e300)


def test_unhashable_or_non_integer_keys_are_refused_with_the_argument_named() -> None:
    builder = Controller.from_method("dapo", 2, 4, 4).begin_step()
    request = builder.next_request()
    assert request is not None
    with pytest.raises(TypeError, match=r"keys must hold integers .* got \[1, 2\] of type list at index 0"):
        builder.report_arrays([0], [[1, 2]], rewards=np.zeros((1, 4)))


@pytest.mark.parametrize("method", ["grpo", "dr_grpo", "rloo", "batch_std"])
def test_advantages_of_huge_rewards_are_computed_stably(method: str) -> None:
    huge = np.array([[1e200, -1e200], [3e300, 1e300]])
    got = group_advantages(huge, method=method)
    assert np.isfinite(got).all()
    if method in ("grpo", "batch_std"):  # scale-free once eps (1e-6) is negligible against the rewards
        np.testing.assert_allclose(got, group_advantages(huge / 1e200, method=method, eps=1e-300), rtol=1e-12)
    else:
        np.testing.assert_allclose(got, group_advantages(huge / 1e200, method=method) * 1e200, rtol=1e-12)
    if method != "batch_std":  # a huge group beside an ordinary one leaves the ordinary one's advantages exact
        mixed = ragged_group_advantages(np.array([1e200, -1e200, 1.0, 0.0]), np.array([0, 0, 7, 7]), method=method)
        assert mixed[2:].tolist() == group_advantages(np.array([[1.0, 0.0]]), method=method)[0].tolist()
