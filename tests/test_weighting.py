"""Task-weighting rules and their pure functions: simplex invariants, state round trips, paper behaviours."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgrpo_core.protocols import TaskSignals, WeightingRule
from mtgrpo_core.reference.scoring import ReferenceIWURule
from mtgrpo_core.weighting import functions as wf
from mtgrpo_core.weighting.rules import FixedRule, IWURule, MinimaxRule, SECRule, UniformRule

HUGE = 1e300
SUM_ATOL = 1e-9


def assert_simplex(z: np.ndarray, k: int) -> None:
    assert z.shape == (k,)
    assert np.isfinite(z).all()
    assert (z >= 0).all()
    assert abs(z.sum() - 1.0) <= SUM_ATOL


def signals_for(rng: np.random.Generator, k: int, scale: float, present_p: float = 0.8) -> TaskSignals:
    present = rng.random(k) < present_p
    nan = np.full(k, np.nan)
    return TaskSignals.build(
        reward=np.where(present, rng.uniform(-scale, scale, k), nan),
        present=present,
        improvement=np.where(present, rng.uniform(-scale, scale, k), nan),
        mean_abs_advantage=np.where(present, rng.uniform(0, scale, k), nan),
    )


RuleFactory = Callable[[int], Any]
RULES: dict[str, RuleFactory] = {
    "iwu-adamw": lambda k: IWURule(k),
    "iwu-adam": lambda k: ReferenceIWURule(k, coupled_decay=True),
    "iwu-sgd": lambda k: IWURule(k, lr=1.0, optimizer="sgd", improvement_clip=None),
    "minimax": lambda k: MinimaxRule(k),
    "minimax-reg": lambda k: MinimaxRule(k, eta=0.01),
    "sec": lambda k: SECRule(k),
    "uniform": lambda k: UniformRule(k),
    "fixed": lambda k: FixedRule(k, np.full(k, 1.0 / k)),
}


finite = st.floats(-HUGE, HUGE, allow_nan=False)
rule_configs = st.one_of(
    st.builds(
        lambda k, lam, lr, opt, clip: IWURule(
            k, lam=lam, lr=lr, optimizer=opt, weight_decay=1e-4, improvement_clip=clip
        ),
        st.integers(1, 8),
        st.floats(0, 10),
        st.floats(1e-3, 10),
        st.sampled_from(["adamw", "sgd"]),
        st.one_of(st.none(), st.floats(1e-3, 1.0)),
    ),
    st.builds(MinimaxRule, st.integers(1, 8), lr=st.floats(1e-3, 10), eta=st.floats(0, 0.99)),
    st.builds(SECRule, st.integers(1, 8), alpha=st.floats(1e-3, 1.0), temperature=st.floats(1e-3, 10)),
)


@st.composite
def signal_sequences(draw: st.DrawFn, k: int) -> list[TaskSignals]:
    steps = draw(st.integers(1, 15))
    out = []
    for _ in range(steps):
        present = np.array(draw(st.lists(st.booleans(), min_size=k, max_size=k)))
        reward = np.array(draw(st.lists(finite, min_size=k, max_size=k)))
        improvement = np.array(draw(st.lists(finite, min_size=k, max_size=k)))
        adv = np.abs(np.array(draw(st.lists(finite, min_size=k, max_size=k))))
        out.append(
            TaskSignals.build(
                reward=np.where(present, reward, np.nan),
                present=present,
                improvement=np.where(present, improvement, np.nan),
                mean_abs_advantage=np.where(present, adv, np.nan),
            )
        )
    return out


@settings(max_examples=75, deadline=None)
@given(rule_configs, st.data())
def test_weights_stay_on_the_simplex_for_extreme_signals(rule: Any, data: st.DataObject) -> None:
    assert_simplex(rule.weights, rule.num_tasks)
    for signals in data.draw(signal_sequences(rule.num_tasks)):
        z = rule.update(signals)
        assert_simplex(z, rule.num_tasks)
        assert np.array_equal(z, rule.weights)


@settings(max_examples=40, deadline=None)
@given(rule_configs, st.data())
def test_restored_rule_continues_with_bit_identical_weights(rule: Any, data: st.DataObject) -> None:
    k = rule.num_tasks
    for signals in data.draw(signal_sequences(k)):
        rule.update(signals)
    state = rule.state_dict()
    fresh = type(rule)(k, **state["config"])
    fresh.load_state_dict(state)
    assert np.array_equal(fresh.weights, rule.weights)
    for signals in data.draw(signal_sequences(k)):
        assert np.array_equal(fresh.update(signals), rule.update(signals))


@pytest.mark.parametrize("name", sorted(RULES))
def test_ten_thousand_tasks_and_thousands_of_steps(name: str) -> None:
    rng = np.random.default_rng(0)
    big = RULES[name](10_000)
    for _ in range(20):
        assert_simplex(big.update(signals_for(rng, 10_000, HUGE)), 10_000)
    small = RULES[name](3)
    for _ in range(2000):
        assert_simplex(small.update(signals_for(rng, 3, 1.0)), 3)


@pytest.mark.parametrize("name", sorted(RULES))
def test_single_task_weight_is_one(name: str) -> None:
    rule = RULES[name](1)
    rng = np.random.default_rng(1)
    for _ in range(50):
        assert rule.update(signals_for(rng, 1, HUGE, present_p=0.5)).tolist() == [1.0]


@pytest.mark.parametrize("name", sorted(RULES))
def test_rules_satisfy_the_protocol_and_return_copies(name: str) -> None:
    rule = RULES[name](3)
    assert isinstance(rule, WeightingRule)
    z = rule.weights
    z[:] = 7.0
    assert_simplex(rule.weights, 3)
    state = rule.state_dict()
    for value in state.values():
        if isinstance(value, np.ndarray):
            value[:] = 7.0
    assert_simplex(rule.weights, 3)


def test_state_dict_holds_plain_data() -> None:
    rule = IWURule(3)
    rule.update(TaskSignals.build(reward=[0.1, 0.2, 0.3], improvement=[0.0, 0.1, 0.0]))
    state = rule.state_dict()
    assert state["kind"] == "iwu" and state["num_tasks"] == 3 and state["adam_step"] == 1
    assert json.loads(json.dumps(state)) == state  # JSON-native: lists, numbers, strings


# --- the update functions against independent references ---


def test_sgd_iwu_takes_the_plain_subroutine_1_step() -> None:
    rule = IWURule(3, lam=0.5, lr=2.0, optimizer="sgd", weight_decay=0.0, improvement_clip=None)
    j, i = np.array([0.2, 0.4, 0.9]), np.array([0.3, -0.1, 0.05])
    rule.update(TaskSignals.build(reward=j, improvement=i))
    s = i + 0.5 * j
    g = (s - s.mean()) / 3
    np.testing.assert_allclose(rule.logits, -2.0 * g, rtol=0, atol=1e-15)


def test_improvement_is_clipped_to_plus_minus_c() -> None:
    clipped = IWURule(2, lam=0.0, lr=1.0, optimizer="sgd", weight_decay=0.0, improvement_clip=0.2)
    exact = IWURule(2, lam=0.0, lr=1.0, optimizer="sgd", weight_decay=0.0, improvement_clip=None)
    clipped.update(TaskSignals.build(reward=[0.5, 0.5], improvement=[5.0, -0.2]))
    exact.update(TaskSignals.build(reward=[0.5, 0.5], improvement=[0.2, -0.2]))
    assert np.array_equal(clipped.logits, exact.logits)


def test_sgd_weight_decay_is_decoupled_shrinkage() -> None:
    rule = IWURule(2, lam=1.0, lr=0.5, optimizer="sgd", weight_decay=0.1, improvement_clip=None)
    rule.update(TaskSignals.build(reward=[0.0, 1.0], improvement=[0.0, 0.0]))
    xi1 = rule.logits  # from xi = 0 the decay has nothing to shrink: -lr g = -0.5 * (-0.25, 0.25)
    np.testing.assert_allclose(xi1, [0.125, -0.125], atol=1e-15)
    z = rule.weights
    g = z * (np.array([0.0, 1.0]) - z[1])
    rule.update(TaskSignals.build(reward=[0.0, 1.0], improvement=[0.0, 0.0]))
    np.testing.assert_allclose(rule.logits, xi1 - 0.5 * g - 0.05 * xi1, atol=1e-15)


def test_sec_update_by_hand() -> None:
    rule = SECRule(3, alpha=0.5, temperature=0.2)
    rule.update(TaskSignals.build(reward=[0.3, 0.5, 0.1], mean_abs_advantage=[0.5, 0.1, 0.3]))
    q = np.array([0.25, 0.05, 0.15])
    np.testing.assert_allclose(rule.q_values, q, atol=1e-15)
    np.testing.assert_allclose(rule.weights, np.exp(q / 0.2) / np.exp(q / 0.2).sum(), rtol=1e-12)
    assert int(np.argmax(rule.weights)) == 0
    # Task 0 absent: reference-code semantics, r_0 = 0, so Q_0 decays by (1 - alpha).
    rule.update(TaskSignals.build(reward=[np.nan, 0.5, 0.1], mean_abs_advantage=[np.nan, 0.1, 0.3]))
    np.testing.assert_allclose(rule.q_values, [0.125, 0.075, 0.225], atol=1e-15)


def test_stable_softmax_matches_the_definition_and_shift_invariance() -> None:
    x = np.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(wf.stable_softmax(x), np.exp(x) / np.exp(x).sum(), rtol=1e-14)
    np.testing.assert_allclose(wf.stable_softmax(x + 1e3), wf.stable_softmax(x), rtol=1e-12)
    z = wf.stable_softmax([1e308, -1e308, 0.0], temperature=1e-3)
    assert z.tolist() == [1.0, 0.0, 0.0]


# --- absent tasks ---


def test_absent_tasks_get_zero_gradient_and_a_renormalised_mean() -> None:
    z = np.array([0.5, 0.25, 0.25])
    g = wf.minimax_gradient(z, [np.nan, 0.2, 0.6], np.array([False, True, True]))
    np.testing.assert_allclose(g, [0.0, 0.25 * (0.2 - 0.4), 0.25 * (0.6 - 0.4)], atol=1e-15)
    assert wf.minimax_gradient(z, [1.0, 2.0, 3.0], np.zeros(3, dtype=bool)).tolist() == [0.0, 0.0, 0.0]


def test_absent_task_logit_is_untouched_by_the_plain_step() -> None:
    rule = IWURule(3, lr=1.0, optimizer="sgd", weight_decay=0.0)
    rule.update(TaskSignals.build(reward=[0.1, np.nan, 0.8], improvement=[0.0, np.nan, 0.1]))
    assert rule.logits[1] == 0.0
    assert np.isfinite(rule.logits).all()


@pytest.mark.parametrize("name", ["iwu-adamw", "iwu-sgd", "minimax-reg", "sec"])
def test_no_task_present_leaves_the_state_unchanged(name: str) -> None:
    rule = RULES[name](3)
    rng = np.random.default_rng(3)
    for _ in range(3):
        rule.update(signals_for(rng, 3, 1.0, present_p=1.0))
    before = rule.state_dict()
    nan = [np.nan] * 3
    rule.update(TaskSignals.build(reward=nan, improvement=nan, mean_abs_advantage=nan))
    after = rule.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert np.array_equal(value, after[key]) if isinstance(value, np.ndarray) else value == after[key]


# --- the paper's qualitative behaviours ---


def test_strict_minimax_collapses_onto_the_current_worst_task() -> None:
    """Figure 2: z concentrates on the worst task, the others starve, and it flips when the worst changes."""
    rule = MinimaxRule(3)
    for _ in range(100):
        rule.update(TaskSignals.build(reward=[0.8, 0.5, 0.2]))
    assert rule.weights[2] > 0.95
    assert rule.weights[:2].max() < 0.05
    for _ in range(600):
        rule.update(TaskSignals.build(reward=[0.1, 0.5, 0.6]))
    assert rule.weights[0] > 0.95


def test_regularised_minimax_stays_closer_to_uniform_as_eta_grows() -> None:
    distances = []
    for eta in (0.0, 1e-3, 1e-2, 1e-1):
        rule = MinimaxRule(3, eta=eta)
        for _ in range(500):
            rule.update(TaskSignals.build(reward=[0.8, 0.5, 0.2]))
        distances.append(0.5 * np.abs(rule.weights - 1 / 3).sum())
    assert all(a > b for a, b in itertools.pairwise(distances)), distances
    assert distances[0] > 0.6 and distances[-1] < 0.4


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_iwu_with_equal_rewards_moves_weight_to_the_least_improving_task(optimizer: str) -> None:
    rule = IWURule(3, optimizer=optimizer, lr=0.025 if optimizer == "adamw" else 1.0)
    previous = rule.weights[1]
    for _ in range(20):
        z = rule.update(TaskSignals.build(reward=[0.5, 0.5, 0.5], improvement=[0.1, 0.0, 0.05]))
        assert z[1] > previous
        previous = z[1]
    assert z[1] > z[2] > z[0]


# --- bad input ---


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: IWURule(0), ValueError, "num_tasks must be >= 1, got 0"),
        (lambda: IWURule(True), TypeError, "num_tasks must be an int"),
        (lambda: IWURule(3, lam=-0.1), ValueError, r"lam must be in \[0.0, inf\], got -0.1"),
        (lambda: IWURule(3, lam="big"), TypeError, "lam must be a real number"),  # type: ignore[arg-type]
        (lambda: IWURule(3, lr=0.0), ValueError, r"lr must be in \(0.0, inf\], got 0.0"),
        (lambda: IWURule(3, optimizer="adam"), ValueError, r"optimizer must be one of \['adamw', 'sgd'\]"),
        (lambda: IWURule(3, weight_decay=-1e-5), ValueError, "weight_decay must be in"),
        (lambda: IWURule(3, lr=10.0, weight_decay=0.1), ValueError, "lr \\* weight_decay must be < 1"),
        (lambda: IWURule(3, improvement_clip=0.0), ValueError, "improvement_clip must be in"),
        (lambda: IWURule(3, improvement_clip=float("inf")), ValueError, "improvement_clip must be finite"),
        (lambda: MinimaxRule(3, eta=1.0), ValueError, r"eta must be in \[0.0, 1.0\), got 1.0"),
        (lambda: MinimaxRule(3, eta=-0.1), ValueError, "eta must be in"),
        (lambda: MinimaxRule(3, lr=-1.0), ValueError, "lr must be in"),
        (lambda: SECRule(3, alpha=0.0), ValueError, r"alpha must be in \(0.0, 1.0\], got 0.0"),
        (lambda: SECRule(3, alpha=1.5), ValueError, "alpha must be in"),
        (lambda: SECRule(3, temperature=0.0), ValueError, "temperature must be in"),
        (lambda: FixedRule(2, [0.5, 0.6]), ValueError, "weights must sum to 1"),
        (lambda: FixedRule(2, [-0.1, 1.1]), ValueError, "weights must be >= 0, got -0.1"),
        (lambda: FixedRule(2, [np.nan, 1.0]), ValueError, "weights must be finite"),
        (lambda: FixedRule(2, [0.5, 0.25, 0.25]), ValueError, r"weights must have 2 entries \(one per task\), got 3"),
        (lambda: UniformRule(2.5), TypeError, "num_tasks must be an int"),  # type: ignore[arg-type]
    ],
)
def test_bad_constructor_arguments_are_refused(make: Callable[[], Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_bad_signals_are_refused_and_leave_the_rule_unchanged() -> None:
    rule = IWURule(3)
    with pytest.raises(ValueError, match="signals has 2 tasks, expected 3"):
        rule.update(TaskSignals.build(reward=[0.1, 0.2], improvement=[0.0, 0.0]))
    with pytest.raises(TypeError, match="signals must be a TaskSignals"):
        rule.update({"reward": [0.1, 0.2, 0.3]})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"signals.improvement is None, but IWURule needs it"):
        rule.update(TaskSignals.build(reward=[0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"signals.mean_abs_advantage is None, but SECRule needs it"):
        SECRule(3).update(TaskSignals.build(reward=[0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"mean_abs_advantage must be >= 0 at present tasks, got -0.5"):
        SECRule(3).update(TaskSignals.build(reward=[0.1, 0.2, 0.3], mean_abs_advantage=[0.1, -0.5, 0.0]))
    raw = TaskSignals(present=np.ones(3, dtype=bool), reward=np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ValueError, match=r"signals.reward at present tasks must be finite, got .*nan"):
        MinimaxRule(3).update(raw)
    assert rule.weights.tolist() == [1 / 3] * 3


def test_a_step_that_would_overflow_is_refused_and_leaves_the_rule_unchanged() -> None:
    rule = MinimaxRule(3)
    with (
        np.errstate(over="ignore"),
        pytest.raises(ValueError, match="would make the gradient non-finite"),
    ):
        rule.update(TaskSignals.build(reward=[1.7e308, 1.7e308, -1.7e308]))
    assert rule.logits.tolist() == [0.0, 0.0, 0.0]


def test_bad_state_dicts_are_refused() -> None:
    rule = IWURule(3)
    with pytest.raises(ValueError, match=r"state\['kind'\] is 'minimax', expected 'iwu'"):
        rule.load_state_dict(MinimaxRule(3).state_dict())
    with pytest.raises(ValueError, match=r"state\['num_tasks'\] is 4, expected 3"):
        rule.load_state_dict(IWURule(4).state_dict())
    with pytest.raises(ValueError, match=r"state\['config'\] is .*'lam': 0.5.*expected"):
        rule.load_state_dict(IWURule(3, lam=0.5).state_dict())
    with pytest.raises(TypeError, match="state must be a mapping"):
        rule.load_state_dict([1, 2])  # type: ignore[arg-type]
    state = rule.state_dict()
    state["logits"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"state\['logits'\] must have shape \(3,\), got \(4,\)"):
        rule.load_state_dict(state)
    del state["logits"]
    with pytest.raises(ValueError, match="state lacks 'logits'"):
        rule.load_state_dict(state)
    with pytest.raises(ValueError, match="a FixedRule's weights are its configuration"):
        FixedRule(2, [0.5, 0.5]).load_state_dict(FixedRule(2, [0.25, 0.75]).state_dict())
    with pytest.raises(ValueError, match="expected 'sec'"):
        SECRule(3).load_state_dict(UniformRule(3).state_dict())


def test_bad_arguments_to_the_pure_functions_are_refused() -> None:
    present = np.ones(3, dtype=bool)
    with pytest.raises(ValueError, match="logits must have at least one entry"):
        wf.stable_softmax([])
    with pytest.raises(ValueError, match=r"logits must be finite, got .*nan.* at index 1"):
        wf.stable_softmax([0.0, np.nan])
    with pytest.raises(ValueError, match="temperature must be in"):
        wf.stable_softmax([0.0], temperature=0.0)
    with pytest.raises(ValueError, match="weights must sum to 1"):
        wf.minimax_gradient([0.5, 0.5, 0.5], [0.1, 0.2, 0.3], present)
    with pytest.raises(ValueError, match=r"present must be a bool array of shape \(3,\)"):
        wf.minimax_gradient([0.5, 0.25, 0.25], [0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match=r"score at present tasks must be finite, got .*inf"):
        wf.iwu_gradient([0.5, 0.25, 0.25], [0.1, np.inf, 0.3], present)
    with pytest.raises(ValueError, match=r"reward must have shape \(3,\)"):
        wf.minimax_gradient([0.5, 0.25, 0.25], [0.1, 0.2], present)
    with pytest.raises(ValueError, match="improvement and reward must have the same shape"):
        wf.iwu_score([0.1], [0.1, 0.2], 0.2)
    with pytest.raises(ValueError, match=r"grad must have shape \(2,\) like the logits"):
        wf.regularised_step([0.0, 0.0], [1.0], 0.1, 0.0)
    with pytest.raises(ValueError, match=r"state.exp_avg must have shape \(2,\)"):
        wf.adamw_step([0.0, 0.0], [1.0, 1.0], wf.AdamWState.zeros(3), 0.1, 0.0)
    with pytest.raises(ValueError, match="alpha must be in"):
        wf.sec_update([0.0], [1.0], 0.0)
