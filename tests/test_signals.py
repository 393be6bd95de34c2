"""Per-task signals: J_k, accuracy, improvement I_k (Eq. 8), SEC's mean |A| and the reward-change fallback."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.signals import (
    RewardChangeImprovement,
    mean_abs_advantage_per_task,
    task_accuracy,
    task_improvement,
    task_rewards,
)


@st.composite
def tagged_values(draw):
    k = draw(st.integers(1, 6))
    m = draw(st.integers(0, 30))
    ids = np.array(draw(st.lists(st.integers(0, k - 1), min_size=m, max_size=m)), dtype=np.int64)
    values = np.array(draw(st.lists(st.floats(-1e3, 1e3), min_size=m, max_size=m)))
    return k, ids, values


@settings(max_examples=60, deadline=None)
@given(tagged_values())
def test_task_rewards_match_a_loop(case):
    k, ids, values = case
    means, counts = task_rewards(values, ids, k)
    for task in range(k):
        members = [float(x) for x, t in zip(values, ids, strict=True) if t == task]
        assert counts[task] == len(members)
        if members:
            assert means[task] == pytest.approx(math.fsum(members) / len(members), rel=1e-12, abs=1e-9)
        else:
            assert math.isnan(means[task])


def test_rewards_accuracy_and_absent_tasks():
    rewards = [1.0, 0.1, 0.0, 1.0, 1.0, 0.1]
    ids = [0, 0, 0, 2, 2, 2]
    means, counts = task_rewards(rewards, ids, 3)
    np.testing.assert_allclose(means, [1.1 / 3, np.nan, 2.1 / 3])
    assert counts.tolist() == [3, 0, 3] and counts.dtype == np.int64
    np.testing.assert_allclose(task_accuracy(rewards, ids, 3), [1 / 3, np.nan, 2 / 3])
    np.testing.assert_allclose(task_accuracy(rewards, ids, 3, correct_reward=0.1), [1 / 3, np.nan, 1 / 3])
    signals = TaskSignals.build(reward=means)  # NaN marks the absent task for the rules
    assert signals.present.tolist() == [True, False, True]


def test_improvement_is_per_task_mean_of_after_minus_before():
    before = np.array([0.0, 0.2, 0.1, 0.5, -0.3])
    after = np.array([0.3, 0.2, 0.0, 0.4, 0.9])
    ids = np.array([0, 0, 1, 1, 3])
    got = task_improvement(before, after, ids, 4, reduce="mean")
    np.testing.assert_allclose(got, [0.15, -0.1, np.nan, 1.2])
    np.testing.assert_allclose(task_improvement(before, after, ids, 4), got)  # mean is the default
    np.testing.assert_allclose(task_improvement(before, after, ids, 4, reduce="sum"), [0.3, -0.2, np.nan, 1.2])
    # Relation to the reference code: -(sum of losses after - sum of losses before) = n_k * I_k.
    loss_before, loss_after = -before, -after
    reference = -(
        np.bincount(ids, weights=loss_after, minlength=4) - np.bincount(ids, weights=loss_before, minlength=4)
    )
    np.testing.assert_allclose(reference[[0, 1, 3]], (got * np.bincount(ids, minlength=4))[[0, 1, 3]])


def test_mean_abs_advantage_per_task():
    got = mean_abs_advantage_per_task([1.0, -3.0, 0.5, 0.0], [1, 1, 0, 0], 3)
    np.testing.assert_allclose(got, [0.25, 2.0, np.nan])


def test_reward_change_fallback_is_an_ema_of_reward_changes():
    tracker = RewardChangeImprovement(3, smoothing=0.5)
    np.testing.assert_allclose(tracker.update([0.2, 0.5, np.nan]), [0.0, 0.0, np.nan])  # first sight: 0
    np.testing.assert_allclose(tracker.update([0.4, np.nan, 0.1]), [0.2, np.nan, 0.0])  # first change: d
    np.testing.assert_allclose(tracker.update([0.4, 0.3, 0.3]), [0.1, -0.2, 0.2])  # 0.5 * 0.2 + 0.5 * 0
    restored = RewardChangeImprovement(3)
    restored.load_state_dict(tracker.state_dict())
    step = [0.1, 0.9, np.nan]
    np.testing.assert_array_equal(restored.update(step), tracker.update(step))
    np.testing.assert_allclose(tracker.update([0.1, 0.9, 0.3]), [-0.05, 0.1, 0.1])  # est was -0.1, 0.2, 0.2


def test_reward_change_state_of_another_kind_or_k_is_refused():
    tracker = RewardChangeImprovement(2)
    with pytest.raises(ValueError, match="another K"):
        tracker.load_state_dict(RewardChangeImprovement(3).state_dict())
    with pytest.raises(ValueError, match="another object"):
        tracker.load_state_dict({"kind": "iwu", "num_tasks": 2})
    bad = tracker.state_dict() | {"estimate": [0.0, float("inf")]}
    with pytest.raises(ValueError, match=r"state\['estimate'\] must hold 2 finite-or-NaN values"):
        tracker.load_state_dict(bad)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown task id 3; expected ids in \\[0, 3\\)"):
        task_rewards([1.0, 0.0], [0, 3], 3)
    with pytest.raises(ValueError, match="unknown task id -1"):
        task_accuracy([1.0], [-1], 2)
    with pytest.raises(ValueError, match="rewards and task_ids must have the same length, got 2 and 1"):
        task_rewards([1.0, 0.0], [0], 2)
    with pytest.raises(ValueError, match="rewards must be finite, got nan at index 1"):
        task_rewards([1.0, float("nan")], [0, 1], 2)
    with pytest.raises(ValueError, match="rewards must be finite, got inf"):
        task_accuracy([float("inf")], [0], 1)
    with pytest.raises(ValueError, match="num_tasks must be >= 1, got 0"):
        task_rewards([], [], 0)
    with pytest.raises(ValueError, match="before and after must have the same length, got 2 and 3"):
        task_improvement([0.0, 1.0], [0.0, 1.0, 2.0], [0, 0], 1)
    with pytest.raises(ValueError, match="after must be finite"):
        task_improvement([0.0], [float("nan")], [0], 1)
    with pytest.raises(ValueError, match=r"reduce must be one of \['mean', 'sum'\], got 'max'"):
        task_improvement([0.0], [0.1], [0], 1, reduce="max")
    with pytest.raises(ValueError, match="advantages must be finite"):
        mean_abs_advantage_per_task([float("-inf")], [0], 1)
    with pytest.raises(ValueError, match=r"smoothing must be in \[0.0, 1.0\), got 1.0"):
        RewardChangeImprovement(2, smoothing=1.0)
    with pytest.raises(ValueError, match="reward must have 2 entries"):
        RewardChangeImprovement(2).update([0.1])
    with pytest.raises(ValueError, match="reward must be finite or NaN"):
        RewardChangeImprovement(1).update([float("inf")])
