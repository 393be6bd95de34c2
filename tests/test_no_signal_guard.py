"""The no-signal guard: a task that never yields an informative group neither hangs a step nor drains the budget,
the rule stops chasing it, and a task that is merely hard is not hidden."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtgrpo_core import Controller, SamplerConfig, TaskSignals
from mtgrpo_core.sampling.targets import NoSignalGuard, guard_window
from tests.sampler_sim import AcceptanceCaller

PAPER_RATES = [0.30, 0.15, 0.70]


def _run(rates: list[float], steps: int, **sampler: object) -> tuple[Controller, list]:
    ctrl = Controller.from_method("mt-grpo:0.2", len(rates), 32, 8, seed=0, **sampler)
    caller = AcceptanceCaller(np.array(rates), seed=1)
    reports = []
    for _ in range(steps):
        report = caller.run(ctrl.begin_step()).report
        reports.append(report)
        reward = np.where(np.array(rates) >= 1.0, 0.0, 0.5)  # the dead task scores 0: a worst-task rule chases it
        ctrl.end_step(TaskSignals.build(reward=reward, improvement=np.zeros(len(rates))))
    return ctrl, reports


def test_window_follows_the_floor_and_miss_probability() -> None:
    assert guard_window(0.02, 1e-3) == 342 and guard_window(0.02, 0.05) == 149
    assert 0.98**342 <= 1e-3 < 0.98**341
    with pytest.raises(ValueError, match=r"floor must be in \(0.0, 1.0\), got 1.0"):
        guard_window(1.0, 0.05)


def test_a_task_without_signal_stops_draining_generation() -> None:
    """The guard alone (no generation cap, which would also bound the drain: see the next test)."""
    _, unguarded = _run([*PAPER_RATES, 1.0], 40, guard_floor=0.0, generation_cap=0.0)
    ctrl, guarded = _run([*PAPER_RATES, 1.0], 40, generation_cap=0.0)
    _, baseline = _run(PAPER_RATES, 40, generation_cap=0.0)
    late = slice(20, 40)
    gen = {
        name: np.mean([r.generated.sum() for r in reps[late]])
        for name, reps in (("unguarded", unguarded), ("guarded", guarded), ("baseline", baseline))
    }
    assert all(r.budget_exhausted for r in unguarded[late])  # without the guard every step spends its budget
    assert not any(r.budget_exhausted for r in guarded[late]) and all(len(r.barren_tasks) == 1 for r in guarded[late])
    assert gen["guarded"] <= 1.5 * gen["baseline"] < gen["unguarded"]
    assert all(r.generated[3] == 8 for r in guarded[late])  # probes only: ceil(32 / 4) groups per step
    z = ctrl.weights
    assert all(r.realized_counts.sum() == 32 and r.weights[3] == 0.0 for r in guarded[late])
    assert z[3] < 0.5  # the rule stopped raising the dead task's weight once it was barren


def test_the_default_cap_bounds_the_drain_and_the_guard_still_acts() -> None:
    _, unguarded = _run([*PAPER_RATES, 1.0], 40, guard_floor=0.0)
    _, guarded = _run([*PAPER_RATES, 1.0], 40)
    assert all(r.generated.sum() <= 96 for r in unguarded + guarded)  # 3 B
    assert all(r.capped and r.budget_exhausted for r in unguarded[20:])
    assert all(r.barren_tasks == (3,) and r.generated[3] == 8 for r in guarded[20:])  # probes, within the cap


def test_a_hard_task_at_the_floor_is_rarely_hidden() -> None:
    _, reports = _run([*PAPER_RATES, 0.98], 300)  # 2% informative
    barren_steps = sum(bool(r.barren_tasks) for r in reports)
    assert barren_steps <= 0.05 * len(reports)
    assert sum(r.realized_counts[3] for r in reports) > 0


def test_guard_state_round_trips_and_bad_state_is_refused() -> None:
    ctrl, _ = _run([*PAPER_RATES, 1.0], 15)
    state = json.loads(json.dumps(ctrl.state_dict()))
    assert state["sampler"]["guard"]["dry"][3] >= 342
    twin = Controller.from_method("mt-grpo:0.2", 4, 32, 8, seed=0)
    twin.load_state_dict(state)
    assert twin.sampler.guard is not None and twin.sampler.guard.barren.tolist() == [False, False, False, True]
    bad = json.loads(json.dumps(state))
    bad["sampler"]["guard"]["dry"] = [0, -1, 0, 0]
    fresh = Controller.from_method("mt-grpo:0.2", 4, 32, 8, seed=0)
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=r"state\['dry'\] must be 4 non-negative ints"):
        fresh.load_state_dict(bad)
    assert fresh.state_dict() == before


def test_all_barren_steps_aside_and_bad_settings_are_refused() -> None:
    guard = NoSignalGuard(2, probe=3)
    guard.update(np.array([400, 400]), np.array([0, 0]))
    assert not guard.barren.any()  # nothing to redistribute to: the round budget bounds the step instead
    guard.update(np.array([0, 0]), np.array([1, 0]))
    assert guard.barren.tolist() == [False, True] and guard.probes().tolist() == [0, 3]
    np.testing.assert_allclose(guard.sampling_weights(np.array([0.2, 0.8])), [1.0, 0.0])
    with pytest.raises(ValueError, match=r"guard_floor must be in \[0.0, 1.0\), got 1.0"):
        SamplerConfig(8, 4, guard_floor=1.0)
    with pytest.raises(ValueError, match="guard_probe must be >= 1, got 0"):
        SamplerConfig(8, 4, guard_probe=0)
