"""The per-step generation cap (issue 20, item 4): `SamplerConfig.generation_cap`, `targets.fair_share`, the first
request from the prior's mean, which methods cap, and the refusals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mtgrpo_core import Controller, RatioPreservingSampler, SamplerConfig
from mtgrpo_core.methods import LEAN, parse_method
from mtgrpo_core.sampling.sampler import Batch
from mtgrpo_core.sampling.targets import fair_share
from mtgrpo_core.settings import Settings


def _run(sampler: RatioPreservingSampler, weights: Any, accept: Any, steps: int, seed: int = 0) -> list[Batch]:
    """Steps of the conversation, each group informative with its task's probability `accept`."""
    rng = np.random.default_rng(seed)
    accept = np.asarray(accept)
    out = []
    for step in range(steps):
        builder = sampler.begin(weights, step)
        while (request := builder.next_request()) is not None:
            tasks = np.repeat(np.arange(sampler.num_tasks), request.counts)
            builder.report_arrays(tasks, informative=rng.random(tasks.shape[0]) < accept[tasks])
        out.append(builder.finish())
    return out


def _lean(k: int, b: int, **overrides: Any) -> RatioPreservingSampler:
    return RatioPreservingSampler(k, SamplerConfig(batch_size=b, group_size=8, **{**LEAN, **overrides}), seed=0)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (-1.0, ValueError, "generation_cap must be in [0.0, inf], got -1.0"),
        (float("nan"), ValueError, "generation_cap must be finite, got nan"),
        (float("inf"), ValueError, "generation_cap must be finite, got inf"),
        ("3", TypeError, "generation_cap must be a real number, got '3' of type str"),
        (True, TypeError, "generation_cap must be a real number, got True of type bool"),
        (0.5, ValueError, "generation_cap must be 0 (no cap) or >= 1.0 (B prompts per step"),
    ],
)
def test_bad_caps_are_refused_naming_the_setting(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as raised:
        SamplerConfig(batch_size=8, group_size=4, generation_cap=value)
    assert message in str(raised.value)
    with pytest.raises(ValueError, match=r"^sampler\.generation_cap "):
        Settings(sampler={"generation_cap": value})


def test_a_cap_below_one_group_per_task_is_refused_with_the_minimum() -> None:
    with pytest.raises(ValueError, match=r"allows 6 prompts per step .* \(9 tasks\); the minimum is 4.5 \(K / B\)"):
        _lean(9, 2, generation_cap=3.0)
    with pytest.raises(ValueError, match=r"generation_cap 3\.0 allows 6 prompts"):
        Controller.from_method("mt-grpo:0.2", num_tasks=9, batch_size=2, group_size=4)
    assert _lean(9, 2, generation_cap=4.5).cap == 9
    assert _lean(9, 2, generation_cap=0.0).cap is None


def test_fair_share_gives_a_greedy_task_its_share_plus_what_others_leave() -> None:
    weights = np.array([0.3, 0.4, 0.3])
    np.testing.assert_array_equal(fair_share(np.array([10, 10, 100]), 200, weights), [10, 10, 100])  # fits
    np.testing.assert_array_equal(fair_share(np.array([10, 10, 100]), 60, weights), [10, 10, 40])
    np.testing.assert_array_equal(fair_share(np.array([100, 100, 100]), 100, weights), [30, 40, 30])
    # weight 0 (a barren task): only what every weighted task leaves
    np.testing.assert_array_equal(fair_share(np.array([10, 0, 30, 5]), 43, np.append(weights, 0.0)), [10, 0, 30, 3])
    rng = np.random.default_rng(0)
    for _ in range(2000):
        k = int(rng.integers(1, 8))
        request, w = rng.integers(0, 50, k), rng.random(k) * (rng.random(k) < 0.8)
        room = int(rng.integers(0, request.sum() + 5))
        out = fair_share(request, room, w)
        assert out.sum() == min(room, request.sum()) and ((out >= 0) & (out <= request)).all()
        cut = (out < request) & (w > 0)
        if request.sum() > room and cut.any():  # a cut task gets at least its share of the room (whole prompts)
            assert (out[cut] >= np.floor(room * w[cut] / w[w > 0].sum())).all()


def test_a_rarely_informative_heavy_task_stays_within_its_share_and_the_cap() -> None:
    """The issue's case: a task informative 2% of the time with most of the weight would drain many times B a step
    without the cap; with it every step stays within 3 B, the task gets at least its share of it, the step says so
    and takes what the other tasks supply (a short batch when that is not enough)."""
    weights, accept = [0.2, 0.2, 0.6], [0.7, 0.85, 0.02]
    free = _run(_lean(3, 32, generation_cap=0.0), weights, accept, 6)
    capped = _run(_lean(3, 32), weights, accept, 6)
    assert max(b.report.generated.sum() for b in free[1:]) > 10 * 32
    for batch in capped:
        report = batch.report
        assert report.generated.sum() <= 96
        if report.capped:
            assert report.generated.sum() == 96 and report.budget_exhausted
            assert 2 in report.short_tasks and report.generated[2] >= math.floor(0.6 * 96)
            assert len(batch) == min(32, int(report.accepted.sum()))  # filled from the others' surplus
    assert sum(b.report.capped for b in capped) >= 4


@pytest.mark.parametrize("method", ["dapo", "mt-grpo-paper", "mt-grpo:0.2"])
def test_every_planner_respects_a_cap(method: str) -> None:
    ctrl = Controller.from_method(method, num_tasks=3, batch_size=16, group_size=4, seed=1, generation_cap=1.5)
    for batch in _run(ctrl.sampler, [0.3, 0.3, 0.4], [0.5, 0.2, 0.05], 4):
        assert batch.report.generated.sum() <= 24
        assert len(batch) == min(16, int(batch.report.accepted.sum()))


def test_the_guard_still_probes_a_barren_task_within_the_cap() -> None:
    sampler = _lean(3, 32)
    batches = _run(sampler, [0.2, 0.2, 0.6], [0.7, 0.85, 0.0], 30)
    assert any(b.report.barren_tasks == (2,) for b in batches)
    for batch in batches:
        assert batch.report.generated.sum() <= 96
        if batch.report.barren_tasks:
            assert batch.report.generated[2] == 11  # ceil(B / K) probes, requested once
    assert all(len(b) == 32 for b in batches[-5:])


def test_a_cap_that_never_binds_changes_nothing() -> None:
    weights, accept = [0.3, 0.3, 0.4], [0.9, 0.8, 0.7]
    free, wide = _run(_lean(3, 32, generation_cap=0.0), weights, accept, 8), _run(_lean(3, 32), weights, accept, 8)
    assert not any(b.report.capped for b in wide)
    for a, b in zip(free, wide, strict=True):
        np.testing.assert_array_equal(a.keys, b.keys)
        np.testing.assert_array_equal(a.report.generated, b.report.generated)


def test_the_first_request_is_sized_from_the_prior_mean() -> None:
    """Nothing observed yet: each task is asked for twice its target (the flat prior's mean acceptance is 1/2), not
    the prior's 0.9 quantile (M_acc times the target, capped at M_os B = 6 B before)."""
    for k, b in [(3, 32), (9, 256), (300, 1024)]:
        builder = _lean(k, b, generation_cap=0.0).begin(np.full(k, 1.0 / k), 0)
        request = builder.next_request()
        assert request is not None
        np.testing.assert_array_equal(request.counts, 2 * builder.targets)


def test_which_methods_cap() -> None:
    lean = ["mt-grpo:0.2", "rps-only", "minimax", "minimax-reg", "tests.conftest:Anything"]
    assert all(parse_method(m).sampler_settings["generation_cap"] == 3.0 for m in lean)
    for m in ["mt-grpo-paper", "mt-grpo-noinfl", "dapo", "grpo", "sec-dapo", "iwu-only"]:
        assert parse_method(m).sampler_settings.get("generation_cap", 0.0) == 0.0
        assert Controller.from_method(m, 3, 8, 4).sampler.cap is None
    for m in ["mt-grpo-ref", "mt-grpo-ref9", "dapo-ref", "dapo-ref9"]:
        assert parse_method(m).sampler_settings["generation_cap"] == 0.0
        with pytest.raises(ValueError, match="no per-step generation cap in the reference"):
            Controller.from_method(m, 3 if "9" not in m else 9, 32, 4, generation_cap=3.0)
