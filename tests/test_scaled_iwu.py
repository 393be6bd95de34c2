"""IWU on a common scale (mtgrpo_core.weighting.scaled): lam means the same whatever the size of I_k and J_k."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from mtgrpo_core import TaskSignals
from mtgrpo_core.methods import build_rule
from mtgrpo_core.weighting.rules import IWURule
from mtgrpo_core.weighting.scaled import ScaledIWURule


def _signals(rng: np.random.Generator, k: int, i_scale: float = 1.0, j_scale: float = 1.0) -> TaskSignals:
    reward = rng.uniform(0.1, 0.9, k)
    improvement = rng.normal(0.0, 1e-3, k)
    present = rng.random(k) < 0.8
    present[:2] = True
    return TaskSignals.build(
        reward=np.where(present, reward * j_scale, np.nan), improvement=np.where(present, improvement * i_scale, 0.0)
    )


def _run(rule: IWURule, i_scale: float = 1.0, j_scale: float = 1.0, steps: int = 40) -> np.ndarray:
    rng = np.random.default_rng(7)
    for _ in range(steps):
        rule.update(_signals(rng, rule.num_tasks, i_scale, j_scale))
    return rule.weights


def test_the_weights_do_not_depend_on_the_size_of_either_signal() -> None:
    """I_k 1000x larger (a summed reduction, a larger batch) or J_k 10x larger: the same weights, where the paper's
    score changes them."""
    base = _run(ScaledIWURule(5, lam=1.0))
    assert np.allclose(_run(ScaledIWURule(5, lam=1.0), i_scale=1000.0), base, rtol=1e-9, atol=1e-12)
    assert np.allclose(_run(ScaledIWURule(5, lam=1.0), j_scale=10.0), base, rtol=1e-9, atol=1e-12)
    raw = _run(IWURule(5, lam=1.0, improvement_clip=None))
    assert not np.allclose(_run(IWURule(5, lam=1.0, improvement_clip=None), i_scale=1000.0), raw, atol=1e-3)


def test_lam_moves_weight_toward_the_weakest_task() -> None:
    """Task 0 is weakest (lowest J_k) and improves most: a larger lam gives it more weight."""
    shares = []
    for lam in (0.1, 1.0, 10.0):
        rule = ScaledIWURule(3, lam=lam)
        rng = np.random.default_rng(0)
        for _ in range(60):
            reward = np.array([0.2, 0.5, 0.8]) + rng.normal(0, 0.01, 3)
            improvement = np.array([3e-3, 1e-3, 0.0]) + rng.normal(0, 2e-4, 3)
            rule.update(TaskSignals.build(reward=reward, improvement=improvement))
        shares.append(rule.weights[0])
    assert shares[0] < shares[1] < shares[2], shares


def test_the_first_step_scales_by_its_own_spread_and_one_task_measures_none() -> None:
    rule = ScaledIWURule(2, lam=1.0, optimizer="sgd", weight_decay=0.0, lr=1.0)
    rule.update(TaskSignals.build(reward=[0.2, np.nan], improvement=[0.5, 0.0]))  # one task: no spread, g = 0
    assert rule.state_dict()["spread_steps"] == 0 and np.allclose(rule.weights, 0.5)
    rule.update(TaskSignals.build(reward=[0.2, 0.6], improvement=[0.0, 0.0]))
    # sigma_J = 0.2: s = (0, 0) + (1, 3); g = z (s - zbar s) = (-0.5, 0.5); xi = (0.5, -0.5)
    assert rule.logits.tolist() == pytest.approx([0.5, -0.5])


def test_state_round_trips_and_a_bad_state_changes_nothing() -> None:
    rule = ScaledIWURule(4, lam=2.0)
    _run(rule, steps=5)
    state = json.loads(json.dumps(rule.state_dict()))
    again = ScaledIWURule(4, lam=2.0)
    again.load_state_dict(state)
    rng = np.random.default_rng(3)
    step = _signals(rng, 4)
    assert np.array_equal(rule.update(step), again.update(step))
    before = again.state_dict()
    with pytest.raises(ValueError, match=r"spread_variance'\] must be 2 values >= 0"):
        again.load_state_dict({**state, "spread_variance": [-1.0, 0.1]})
    with pytest.raises(ValueError, match="state lacks 'spread_variance'"):
        again.load_state_dict({k: x for k, x in state.items() if k != "spread_variance"})
    assert again.state_dict() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": -1.0}, "lam must be in"),
        ({"lam": math.nan}, "lam must be"),
        ({"spread_decay": 1.0}, r"spread_decay must be in \[0.0, 1.0\), got 1.0"),
        ({"spread_decay": "0.9"}, "spread_decay must be a real number"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        ScaledIWURule(3, **kwargs)  # type: ignore[arg-type]


def test_it_is_built_by_name() -> None:
    rule = build_rule("iwu-scaled", 3, lam=0.5)
    assert isinstance(rule, ScaledIWURule) and rule.lam == 0.5 and rule.needs == frozenset({"improvement"})


def test_a_lam_ramp_steps_like_fixed_rules_at_its_current_lam() -> None:
    """Along a ramp from 0.5 to 3 over 4 updates, each step equals a step of a fixed-lam rule holding the same
    state with lam at that point; after the ramp lam stays at its end."""
    rng = np.random.default_rng(3)
    ramp = ScaledIWURule(4, lam=3.0, lam_start=0.5, lam_ramp=4)
    for t, lam in enumerate((0.5, 1.125, 1.75, 2.375, 3.0, 3.0)):
        fixed = ScaledIWURule(4, lam=lam)
        state = {k: x for k, x in ramp.state_dict().items() if k != "lam_updates"}
        fixed.load_state_dict({**state, "config": fixed.state_dict()["config"]})
        signals = _signals(rng, 4)
        assert np.array_equal(ramp.update(signals), fixed.update(signals)), t
    assert ramp.state_dict()["lam_updates"] == 6


def test_a_lam_ramp_resumes_exactly_and_refuses_a_state_without_its_clock() -> None:
    rule = ScaledIWURule(3, lam=2.0, lam_start=0.0, lam_ramp=10)
    _run(rule, steps=4)
    state = json.loads(json.dumps(rule.state_dict()))
    twin = ScaledIWURule(3, lam=2.0, lam_start=0.0, lam_ramp=10)
    twin.load_state_dict(state)
    rng = np.random.default_rng(11)
    for _ in range(8):
        s = _signals(rng, 3)
        assert np.array_equal(rule.update(s), twin.update(s))
    del state["lam_updates"]
    with pytest.raises(ValueError, match="lam_updates"):
        ScaledIWURule(3, lam=2.0, lam_start=0.0, lam_ramp=10).load_state_dict(state)
    with pytest.raises(ValueError, match="config"):  # a rule without the ramp is another rule
        ScaledIWURule(3, lam=2.0).load_state_dict(rule.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam_start": 0.5}, "lam_start and lam_ramp go together"),
        ({"lam_ramp": 10}, "lam_start and lam_ramp go together"),
        ({"lam_start": -1.0, "lam_ramp": 10}, "lam_start"),
        ({"lam_start": math.nan, "lam_ramp": 10}, "lam_start"),
        ({"lam_start": math.inf, "lam_ramp": 10}, "lam_start"),
        ({"lam_start": 0.5, "lam_ramp": -3}, "lam_ramp"),
        ({"lam_start": 0.5, "lam_ramp": 2.5}, "lam_ramp"),
        ({"lam_start": "0.5", "lam_ramp": 10}, "lam_start"),
    ],
)
def test_bad_lam_ramps_are_refused_naming_the_setting(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        build_rule("iwu-scaled", 3, **kwargs)


def _with_acceptance(signals: TaskSignals, acceptance: np.ndarray) -> TaskSignals:
    return dataclasses.replace(signals, acceptance=acceptance)


def test_the_cost_tilt_weights_the_rules_own_weights_by_acceptance() -> None:
    """z_k = u_k a_k^kappa / sum: the rule's own step (its logits) is the untilted rule's; an absent task keeps its
    last a_k; kappa 1 makes the generation shares z_k / a_k follow u."""
    rng = np.random.default_rng(5)
    plain, tilted = ScaledIWURule(4), ScaledIWURule(4, cost_tilt=1.0)
    assert tilted.needs == {"improvement", "acceptance"} and plain.needs == {"improvement"}
    for _ in range(5):
        s = _signals(rng, 4)
        acceptance = rng.uniform(0.2, 1.0, 4)
        plain.update(s)
        tilted.update(_with_acceptance(s, acceptance))
    last = np.array(tilted.state_dict()["acceptance"])
    u = plain.weights
    assert np.allclose(tilted.weights, u * last / (u * last).sum(), rtol=1e-12)
    generation = tilted.weights / last
    assert np.allclose(generation / generation.sum(), u, rtol=1e-12)
    s = _signals(rng, 4)
    s = dataclasses.replace(s, present=np.array([True, True, True, False]))
    tilted.update(_with_acceptance(s, np.array([0.5, 0.5, 0.5, np.nan])))
    assert tilted.state_dict()["acceptance"][3] == last[3]


def test_the_controller_fills_in_acceptance_from_the_sampler_on_every_path() -> None:
    from mtgrpo_core import Controller

    ctrl = Controller.from_method("mt-grpo-scaled:2", 3, 6, 4, seed=0, rule_kwargs={"cost_tilt": 0.5})
    builder = ctrl.begin_step()
    req = builder.next_request()
    assert req is not None
    tasks = np.repeat(np.arange(3), req.counts)
    rewards = np.tile([1.0, 0.0, 1.0, 0.0], (tasks.size, 1))
    builder.report_arrays(tasks, rewards=rewards)
    builder.finish()
    signals = TaskSignals.build(reward=np.full(3, 0.5), improvement=np.zeros(3))
    ctrl.end_step(signals)
    assert np.array_equal(ctrl.last_signals.acceptance, 1.0 - ctrl.sampler.estimator.filter_rate)


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, "1"])
def test_bad_cost_tilts_are_refused_naming_the_setting(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="cost_tilt"):
        build_rule("iwu-scaled", 3, cost_tilt=value)


def test_bad_acceptance_is_refused_and_changes_nothing() -> None:
    rule = ScaledIWURule(3, cost_tilt=0.5)
    before = rule.state_dict()
    s = _signals(np.random.default_rng(1), 3)
    for bad in (None, np.array([0.5, 1.2, 0.5]), np.array([0.5, -0.1, 0.5])):
        with pytest.raises(ValueError, match="acceptance"):
            rule.update(_with_acceptance(s, bad))  # type: ignore[arg-type]
        assert rule.state_dict() == before
    state = json.loads(json.dumps(before))
    state["acceptance"] = [0.5, 2.0, 0.5]
    with pytest.raises(ValueError, match=r"state\['acceptance'\]"):
        ScaledIWURule(3, cost_tilt=0.5).load_state_dict(state)
