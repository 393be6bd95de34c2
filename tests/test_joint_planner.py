"""The joint-quantile planner: whole-batch completion in one round with the configured joint probability."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgrpo_core import KnownFilterRate, RatioPreservingSampler, SamplerConfig
from mtgrpo_core.sampling.acceptance import fill_cdf
from mtgrpo_core.sampling.joint_planner import joint_requests
from tests.sampler_sim import AcceptanceCaller

RATES = np.array([0.30, 0.15, 0.70])  # the paper's 3-task filter rates
WEIGHTS = np.array([0.46, 0.11, 0.43])


def _log_fill(d: np.ndarray, alpha: np.ndarray, beta: np.ndarray, width: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.minimum(fill_cdf(d, alpha, beta, width), 1.0))


def _confident(accept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return 1e6 * accept, 1e6 * (1.0 - accept) + 1e-6


@pytest.mark.parametrize("confidence", [0.5, 0.9])
def test_the_first_round_completes_the_batch_with_the_configured_joint_probability(confidence: float) -> None:
    config = SamplerConfig(32, 8, planner="joint", confidence=confidence, oversample=10.0)
    sampler = RatioPreservingSampler(3, config, seed=0, estimator=KnownFilterRate(RATES))
    caller = AcceptanceCaller(RATES, seed=1)
    batches = 1500
    one_round = sum(caller.run(sampler.begin(WEIGHTS, step)).report.rounds == 1 for step in range(batches))
    rate = one_round / batches
    sigma = np.sqrt(confidence * (1 - confidence) / batches)
    # the plan meets the joint probability with as few prompts as it can: at or just above it, never well below
    assert confidence - 3 * sigma <= rate <= confidence + 0.06 + 3 * sigma


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=8),
    st.lists(st.floats(0.05, 0.95), min_size=8, max_size=8),
    st.floats(0.05, 0.95),
)
def test_plans_meet_the_goal_within_caps_or_give_the_unreachable_tasks_their_caps(
    deficits: list[int], accepts: list[float], confidence: float
) -> None:
    d = np.array(deficits, dtype=np.int64)
    accept = np.array(accepts[: d.shape[0]])
    alpha, beta = _confident(accept)
    cap = np.ceil(d * 5.0).astype(np.int64)
    r = joint_requests(d, alpha, beta, confidence, cap)
    assert ((r >= d) & (r <= np.maximum(cap, d))).all() and (r[d == 0] == 0).all()
    need = d > 0
    if need.any():
        logp = _log_fill(d[need], alpha[need], beta[need], int((cap - d)[need].max()) + 1)
        got = logp[np.arange(int(need.sum())), (r - d)[need]]
        at_cap = logp[np.arange(int(need.sum())), (cap - d)[need]]
        constrained = r[need] < cap[need]
        if at_cap.sum() >= np.log(confidence):  # reachable: the whole plan meets the goal
            assert got.sum() >= np.log(confidence) - 1e-9
        assert got[constrained].sum() >= np.log(confidence) - 1e-9  # what is below its cap meets the goal


def test_the_plan_is_cheaper_than_per_task_quantiles_would_need_for_the_same_joint_probability() -> None:
    d = np.array([15, 4, 14])
    alpha, beta = _confident(1.0 - RATES)
    cap = np.ceil(d * 5.0).astype(np.int64)
    joint = joint_requests(d, alpha, beta, 0.9, cap)
    width = int((cap - d).max()) + 1
    logp = _log_fill(d, alpha, beta, width)
    # per-task quantiles at 0.9 ** (1/3) reach the same joint probability with more prompts in total
    per_task = np.array([int(np.argmax(logp[k] >= np.log(0.9) / 3)) for k in range(3)]) + d
    assert joint.sum() <= per_task.sum()
    assert np.exp(logp[np.arange(3), joint - d].sum()) >= 0.9


def test_bad_confidence_is_refused_by_name() -> None:
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"confidence must be in \(0.0, 1.0\)"):
            SamplerConfig(8, 4, planner="joint", confidence=bad)
