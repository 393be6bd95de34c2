"""Metrics: worst-task and average accuracy, Delta_m%, steps to a threshold, realized shares and distance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgrpo_core.metrics import (
    average_accuracy,
    delta_m_percent,
    realized_shares,
    share_distance,
    steps_to_threshold,
    worst_task_accuracy,
)


def test_paper_table_row():
    # MT-GRPO lambda=0.2 vs DAPO on 3 tasks: worst task is the minimum, average the mean.
    acc = [0.80, 0.575, 0.64]
    assert worst_task_accuracy(acc) == 0.575
    assert average_accuracy(acc) == pytest.approx(0.671666, abs=1e-6)


def test_delta_m_percent():
    assert delta_m_percent([0.5, 0.3], [0.4, 0.3]) == pytest.approx(12.5)
    assert delta_m_percent([50.0, 30.0], [40.0, 30.0]) == pytest.approx(12.5)  # unit-free
    assert delta_m_percent([0.2, 0.6], [0.4, 0.6]) == pytest.approx(-25.0)
    with pytest.raises(ValueError, match=r"reference accuracy of task 1 is 0.*expected every reference accuracy > 0"):
        delta_m_percent([0.5, 0.1], [0.4, 0.0])
    with pytest.raises(ValueError, match=r"reference must have shape \(2,\)"):
        delta_m_percent([0.5, 0.1], [0.4, 0.2, 0.3])


def test_steps_to_threshold():
    history = [[0.2, 0.6], [0.45, 0.5], [0.55, 0.4], [0.6, 0.52]]
    assert steps_to_threshold(history, 0.5) == 3
    assert steps_to_threshold(history, 0.4, steps=[20, 40, 60, 80]) == 40
    assert steps_to_threshold(history, 0.7) is None
    with pytest.raises(ValueError, match="steps must be strictly increasing"):
        steps_to_threshold(history, 0.5, steps=[0, 10, 10, 20])
    with pytest.raises(ValueError, match="accuracy and steps must have the same length, got 4 and 2"):
        steps_to_threshold(history, 0.5, steps=[0, 10])
    with pytest.raises(ValueError, match="accuracy must have 2 dimension"):
        steps_to_threshold([0.5, 0.6], 0.5)


def test_realized_shares_and_distance():
    shares = realized_shares([30, 10, 0, 60])
    np.testing.assert_allclose(shares, [0.3, 0.1, 0.0, 0.6])
    assert share_distance(shares, [0.25, 0.25, 0.25, 0.25]) == pytest.approx(0.4)
    assert share_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=12), st.data())
def test_share_distance_is_a_total_variation(counts, data):
    if sum(counts) == 0:
        counts[0] = 1
    shares = realized_shares(counts)
    raw = data.draw(st.lists(st.floats(0.01, 1.0), min_size=len(counts), max_size=len(counts)))
    weights = np.array(raw) / sum(raw)
    d = share_distance(shares, weights)
    assert 0.0 <= d <= 1.0 + 1e-12
    assert d == pytest.approx(np.maximum(shares - weights, 0).sum(), abs=1e-12)  # TV = positive part
    assert share_distance(shares, shares) == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="accuracy must be finite, got nan"):
        worst_task_accuracy([0.5, float("nan")])
    with pytest.raises(ValueError, match=r"accuracy must be >= 0, got -0\.1"):
        average_accuracy([0.5, -0.1])
    with pytest.raises(ValueError, match="accuracy must hold at least one task"):
        worst_task_accuracy([])
    with pytest.raises(ValueError, match="counts must not all be 0"):
        realized_shares([0, 0])
    with pytest.raises(ValueError, match="counts must be >= 0, got -1"):
        realized_shares([3, -1])
    with pytest.raises(TypeError, match="counts must hold integers"):
        realized_shares([0.5, 0.5])
    with pytest.raises(ValueError, match="weights must sum to 1"):
        share_distance([0.5, 0.5], [0.5, 0.6])
    with pytest.raises(ValueError, match=r"weights must have 2 entries"):
        share_distance([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="threshold must be finite"):
        steps_to_threshold([[0.5]], float("inf"))
