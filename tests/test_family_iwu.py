"""The family rule (mtgrpo_core.weighting.scaled.FamilyIWURule, method mt-grpo-family) and the task families that
suites give it: weights on the simplex, the plain IWU rule where families are trivial, refusals that name the
setting."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgrpo_backends.simulated.bench import SimulatedRunner
from mtgrpo_backends.simulated.suites import SuiteError, load_suite, suite_from_dict
from mtgrpo_core import TaskSignals
from mtgrpo_core.methods import build_rule, parse_method
from mtgrpo_core.weighting.rules import IWURule
from mtgrpo_core.weighting.scaled import FamilyIWURule
from tests.test_suites import RECIPE_SUITE, TASKS_SUITE


def _signals(rng: np.random.Generator, k: int) -> TaskSignals:
    present = rng.random(k) < 0.8
    present[0] = True
    reward = np.where(present, rng.uniform(0.0, 1.0, k), np.nan)
    return TaskSignals.build(reward=reward, improvement=np.where(present, rng.normal(0.0, 0.1, k), np.nan))


def _weights(rule: Any, steps: int = 30, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rule.update(_signals(rng, rule.num_tasks))
    return np.asarray(rule.weights)


@settings(max_examples=40, deadline=None)
@given(
    families=st.lists(st.integers(0, 4), min_size=1, max_size=12),
    within=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_weights_stay_on_the_simplex(families: list[int], within: float, seed: int) -> None:
    rule = FamilyIWURule(len(families), families=families, within=within)
    z = _weights(rule, steps=15, seed=seed)
    assert z.shape == (len(families),) and (z >= 0).all() and math.isclose(z.sum(), 1.0, abs_tol=1e-12)


def test_one_task_per_family_is_the_plain_rule() -> None:
    """Singleton families: the family level sees each task's own signals, so the weights are IWURule's."""
    for options in ({}, {"lam": 1.0, "optimizer": "sgd", "improvement_clip": None}):
        family = FamilyIWURule(6, families=list("abcdef"), **options)  # type: ignore[arg-type]
        assert np.array_equal(_weights(family), _weights(IWURule(6, **options)))  # type: ignore[arg-type]


def test_one_family_followed_fully_is_the_plain_rule() -> None:
    assert np.array_equal(_weights(FamilyIWURule(5, families=[7] * 5)), _weights(IWURule(5)))


def test_within_zero_spreads_each_familys_weight_evenly() -> None:
    rule = FamilyIWURule(5, families=[0, 0, 1, 1, 1], within=0.0)
    z = _weights(rule)
    assert np.allclose(z[:2], z[0]) and np.allclose(z[2:], z[2]) and not math.isclose(z[0], z[2])


def test_family_signals_are_the_means_over_present_tasks() -> None:
    rule = FamilyIWURule(4, families=[0, 0, 1, 1], lam=1.0, optimizer="sgd", weight_decay=0.0, lr=1.0)
    signals = TaskSignals.build(
        reward=[0.2, np.nan, 0.6, 0.8], present=np.array([True, False, True, True]), improvement=[0.0, 0.0, 0.0, 0.0]
    )
    rule.update(signals)  # family scores 0.2 and 0.7; g = z (s - mean z s) with z = (1/2, 1/2)
    top = rule.state_dict()["families"]["logits"]
    assert np.allclose(top, [0.125, -0.125])


def test_state_round_trips_and_refuses_other_families() -> None:
    rule = FamilyIWURule(6, families=[0, 0, 1, 1, 2, 2], within=0.5)
    _weights(rule)
    state = json.loads(json.dumps(rule.state_dict()))
    again = FamilyIWURule(6, families=[0, 0, 1, 1, 2, 2], within=0.5)
    again.load_state_dict(state)
    assert np.array_equal(again.weights, rule.weights)
    rng = np.random.default_rng(1)
    step = _signals(rng, 6)
    assert np.array_equal(again.update(step), rule.update(step))
    with pytest.raises(ValueError, match="state\\['config'\\]"):
        FamilyIWURule(6, families=[0, 0, 0, 1, 1, 1], within=0.5).load_state_dict(state)
    broken = copy.deepcopy(state)
    broken["tasks"] = broken["tasks"][:2]
    before = again.weights
    with pytest.raises(ValueError, match="state\\['tasks'\\] must list 3"):
        again.load_state_dict(broken)
    assert np.array_equal(again.weights, before)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_a_refused_step_leaves_the_rule_unchanged() -> None:
    rule = FamilyIWURule(4, families=[0, 0, 1, 1], lam=1.0, optimizer="sgd", lr=1e300, weight_decay=0.0)
    before = rule.state_dict()
    with pytest.raises(ValueError, match="non-finite"):
        rule.update(TaskSignals.build(reward=[1e300, -1e300, 1e300, -1e300], improvement=[0.0] * 4))
    assert rule.state_dict() == before


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "families is None: the family rule .* needs each task's family"),
        ({"families": [0, 1]}, ValueError, "families must hold one label per task \\(3\\), got 2"),
        ({"families": "abc"}, TypeError, "families must be a sequence of 3 labels"),
        ({"families": [0, 1, 2.5]}, TypeError, "families must hold int or str labels, got 2.5 of type float"),
        ({"families": [0, True, 1]}, TypeError, "got True of type bool"),
        ({"families": [0, 0, 1], "within": -0.1}, ValueError, "within must be in \\[0.0, 1.0\\], got -0.1"),
        ({"families": [0, 0, 1], "within": math.nan}, ValueError, "within must be finite, got nan"),
        ({"families": [0, 0, 1], "within": math.inf}, ValueError, "within must be finite, got inf"),
        ({"families": [0, 0, 1], "within": "1"}, TypeError, "within must be a real number, got '1'"),
        ({"families": [0, 0, 1], "lam": -1.0}, ValueError, "lam must be in \\[0.0, inf\\], got -1.0"),
        ({"families": [0, 0, 1], "lam": math.nan}, ValueError, "lam must be finite, got nan"),
    ],
)
def test_bad_settings_are_refused_naming_them(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build_rule("iwu-family", 3, **kwargs)


def test_the_method_string_builds_the_family_rule() -> None:
    spec = parse_method("mt-grpo-family:0.3")
    assert spec.rule == "iwu-family" and spec.rule_kwargs == {"lam": 0.3}
    assert spec.sampler_settings == parse_method("mt-grpo").sampler_settings
    with pytest.raises(ValueError, match="lam of method 'mt-grpo-family:-1' must be in"):
        parse_method("mt-grpo-family:-1")


def test_suites_give_their_families() -> None:
    assert load_suite("paper9").families == (0, 0, 0, 1, 1, 1, 2, 2, 2)
    assert load_suite("scale300").families == tuple(k // 10 for k in range(300))
    assert load_suite("paper3").families is None
    named = {**copy.deepcopy(TASKS_SUITE), "families": {"y": ["b"], "x": ["a"]}}
    assert suite_from_dict(named).families == (1, 0)


@pytest.mark.parametrize(
    ("families", "match"),
    [
        ({"x": ["a"]}, "every task in exactly one family, got task\\(s\\) in none: \\['b'\\]"),
        ({"x": ["a", "b"], "y": ["b"]}, "got task\\(s\\) in several: \\{'b': \\['x', 'y'\\]\\}"),
        ({"x": ["a", "c"], "y": ["b"]}, "expected task names of this suite \\(\\['a', 'b'\\]\\), got unknown .*'c'"),
        ({"x": ["a", "b"], "y": []}, "families.y: list should have at least 1 item"),
        ({"": ["a", "b"]}, "families: expected non-empty family names, got '' among \\[''\\]"),
        (["a", "b"], "families: input should be a valid dictionary"),
        ({"x": ["a", 1]}, "families.x\\[1\\]: input should be a valid string"),
    ],
)
def test_suite_families_are_checked_by_the_schema(families: Any, match: str) -> None:
    with pytest.raises(SuiteError, match=match) as info:
        suite_from_dict({**copy.deepcopy(TASKS_SUITE), "families": families})
    assert "suite 'mine'.families" in str(info.value)


def test_a_recipe_takes_its_families_from_family_size() -> None:
    with pytest.raises(SuiteError, match="families come from its family_size; remove 'families'"):
        suite_from_dict({**copy.deepcopy(RECIPE_SUITE), "families": {"x": ["task000"]}})
    assert suite_from_dict(RECIPE_SUITE).families == tuple(k // 4 for k in range(12))


def test_the_simulator_refuses_the_family_method_on_a_suite_without_families() -> None:
    runner = SimulatedRunner(load_suite("paper3"), steps=2, batch_size=32, group_size=8, max_rounds=2)
    with pytest.raises(ValueError, match="method 'mt-grpo-family' weights task families, but suite 'paper3' names"):
        runner.controller("mt-grpo-family", 0)
    nine = SimulatedRunner(load_suite("paper9"), steps=2, batch_size=32, group_size=8, max_rounds=2)
    assert nine(parse_method("mt-grpo-family").name, 0).weights.shape == (2, 9)
