"""Example-based and bad-input tests of RP-SAMPLER, its filter-rate estimators and count schemes."""

from __future__ import annotations

import numpy as np
import pytest

from mtgrpo_core.acceptance import BetaFilterRate, EMAFilterRate, inflation, plan_requests
from mtgrpo_core.sampler import GroupReport, RatioPreservingSampler, run_batch
from mtgrpo_core.sampler_config import SamplerConfig
from mtgrpo_core.targets import apportioned_counts, multinomial_counts
from tests.sampler_sim import AcceptanceCaller

Z3 = np.array([0.46, 0.11, 0.43])
RATES3 = np.array([0.30, 0.15, 0.70])


def sampler(k: int = 3, **kw: object) -> RatioPreservingSampler:
    config = SamplerConfig(batch_size=kw.pop("batch_size", 32), group_size=kw.pop("group_size", 8), **kw)  # type: ignore[arg-type]
    return RatioPreservingSampler(k, config, seed=1)


def test_apportioned_counts_are_unbiased_and_within_one() -> None:
    rng = np.random.default_rng(0)
    draws = np.array([apportioned_counts(Z3, 32, rng) for _ in range(20000)])
    assert (draws.sum(axis=1) == 32).all()
    assert np.abs(draws - 32 * Z3).max() < 1
    assert np.allclose(draws.mean(axis=0), 32 * Z3, atol=0.02)
    # the best any unbiased rounding can do: E|n_k - B z_k| = 2 f_k (1 - f_k) for fractional parts f_k
    frac = 32 * Z3 - np.floor(32 * Z3)
    expected_tv = (2 * frac * (1 - frac)).sum() / (2 * 32)
    tv = 0.5 * np.abs(draws / 32 - Z3).sum(axis=1).mean()
    assert tv == pytest.approx(expected_tv, abs=0.001)


def test_multinomial_counts_sum_to_total() -> None:
    rng = np.random.default_rng(0)
    assert multinomial_counts(Z3, 32, rng).sum() == 32


def test_grpo_mode_requests_targets_once_and_keeps_everything() -> None:
    s = sampler(filtering="none")
    b = s.begin(Z3, 0)
    req = b.next_request()
    assert req is not None and np.array_equal(req.counts, b.targets) and req.total == 32
    AcceptanceCaller(np.ones(3), 0).answer(b, req)  # every group zero-gradient: kept anyway
    assert b.next_request() is None
    batch = b.finish()
    assert len(batch) == 32 and np.array_equal(batch.report.realized_counts, b.targets)
    assert batch.report.informative.sum() == 0


def test_ratio_preserved_where_dapo_truncation_skews() -> None:
    rp_tv, dapo_tv = [], []
    for step in range(100):
        for ratio, out in ((True, rp_tv), (False, dapo_tv)):
            s = sampler(ratio_constraint=ratio, acceptance_aware=ratio)
            batch = AcceptanceCaller(RATES3, step).run(s.begin(Z3, step))
            out.append(0.5 * np.abs(batch.report.realized_shares - Z3).sum())
    assert np.mean(rp_tv) < 0.03
    assert np.mean(dapo_tv) > 0.1  # the high-filter task is under-represented without the constraint


def test_always_filtered_task_ends_by_budget_and_is_reported_short() -> None:
    s = sampler(max_rounds=3)
    batch = AcceptanceCaller(np.array([0.0, 0.0, 1.0]), 0).run(s.begin(Z3, 0))
    rep = batch.report
    assert rep.rounds == 4 and rep.budget_exhausted
    assert 2 in rep.short_tasks and rep.realized_counts[2] == 0
    assert len(batch) == 32  # filled from the surplus of the other tasks


def test_rewards_are_filtered_by_the_sampler() -> None:
    s = sampler(batch_size=2, group_size=3, filtering="strict")
    b = s.begin(np.array([1.0, 0.0, 0.0]), 0)
    req = b.next_request()
    assert req is not None
    n = req.total
    rewards = np.tile([0.1, 0.0, 0.1], (n, 1))  # lenient: informative; strict: all wrong -> filtered
    rewards[0] = [1.0, 1.0, 0.0]
    b.report([GroupReport(task=0, key=i, rewards=r) for i, r in enumerate(rewards)])
    while (req := b.next_request()) is not None:
        b.report_arrays(
            np.zeros(req.total, dtype=int),
            np.arange(1000 + 100 * req.round, 1000 + 100 * req.round + req.total),
            rewards=np.tile([0.0, 0.0, 0.1], (req.total, 1)),
        )
    batch = b.finish()
    assert batch.keys.tolist() == [0]
    assert batch.report.mean_reward[0] == pytest.approx(
        (rewards.sum() + 0.1 * (batch.report.generated[0] - n)) / (3 * batch.report.generated[0])
    )
    assert np.isnan(batch.report.mean_reward[1])


def test_run_batch_driver_and_filter_rate_update() -> None:
    s = sampler()

    def generate(req):  # type: ignore[no-untyped-def]
        return [
            GroupReport(task=k, key=(req.round, k, i), informative=k != 2 or i % 2 == 0)
            for k in range(3)
            for i in range(int(req.counts[k]))
        ]

    batch = run_batch(s.begin(Z3, 0), generate)
    assert len(batch) == 32
    assert s.estimator.filter_rate[2] > 0.2 and s.estimator.filter_rate[0] == 0.0


def test_posterior_planner_uses_fewer_prompts_than_paper_rounds() -> None:
    used = {}
    for planner in ("paper", "posterior"):
        s = sampler(planner=planner)
        gen = 0
        for step in range(60):
            batch = AcceptanceCaller(RATES3, step).run(s.begin(Z3, step))
            gen += batch.report.generated.sum()
        used[planner] = gen / (60 * 32)
    # measured 2.93 vs 3.30 (the minimum possible in expectation is 2.22); see docs/sampler.md
    assert used["posterior"] < 0.95 * used["paper"]
    assert used["posterior"] < 3.0


def test_inflation_and_plan_requests() -> None:
    assert np.allclose(inflation(np.array([0.0, 0.5, 0.9, 1.0]), 5.0), [1.0, 2.0, 5.0, 5.0])
    r = plan_requests(
        np.array([5, 0, 1]),
        np.array([3.0, 1.0, 50.0]),
        np.array([7.0, 1.0, 1.0]),
        0.9,
        np.array([1000, 1000, 1000]),
    )
    assert r[1] == 0 and r[2] == 1 and r[0] > 5 / 0.3
    assert plan_requests(np.array([5]), np.array([1.0]), np.array([100.0]), 0.9, np.array([25]))[0] == 25


def test_estimators_update_and_restore() -> None:
    for est in (EMAFilterRate(2, alpha=0.5), BetaFilterRate(2, forgetting=1.0)):
        est.update([10, 0], [3, 0])
        state = est.state_dict()
        assert est.filter_rate[0] > 0.3 and est.filter_rate[1] == est.filter_rate[1]
        fresh = type(est)(2)
        fresh.load_state_dict(state)
        assert np.array_equal(fresh.filter_rate, est.filter_rate)
        with pytest.raises(ValueError, match="accepted must not exceed generated"):
            est.update([1, 1], [2, 0])
        with pytest.raises(ValueError, match="another K"):
            type(est)(3).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"group_size": 1}, "group_size must be >= 2 when filtering"),
        ({"oversample": 0.5}, "oversample must be in"),
        ({"max_inflation": 0.9}, "max_inflation must be in"),
        ({"max_rounds": -1}, "max_rounds must be >= 0, got -1"),
        ({"filtering": "loose"}, "filtering must be one of"),
        ({"planner": "magic"}, "planner must be one of"),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        sampler(**kwargs)


def test_bad_reports_are_refused_and_nothing_half_applied() -> None:
    s = sampler()
    with pytest.raises(ValueError, match="weights must sum to 1"):
        s.begin([0.5, 0.2, 0.2], 0)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        s.begin([1.2, -0.2, 0.0], 0)
    b = s.begin(Z3, 0)
    req = b.next_request()
    assert req is not None
    with pytest.raises(ValueError, match="unknown task id 3"):
        b.report_arrays([3], [0], informative=np.array([True]))
    with pytest.raises(ValueError, match="rewards must be finite, got nan"):
        b.report_arrays([0], [0], rewards=np.array([[1.0, np.nan, 0, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="reported twice"):
        b.report_arrays([0, 0], [5, 5], informative=np.array([True, True]))
    with pytest.raises(ValueError, match="not yet reported"):
        b.report_arrays(
            [0] * (int(req.counts[0]) + 1),
            range(int(req.counts[0]) + 1),
            informative=np.ones(int(req.counts[0]) + 1, dtype=bool),
        )
    assert (b.outstanding == req.counts).all()  # the refused calls changed nothing
    b.report_arrays([0], ["a"], informative=np.array([True]))
    with pytest.raises(ValueError, match="reported twice"):
        b.report_arrays([0], ["a"], informative=np.array([True]))
    with pytest.raises(ValueError, match="not reported yet"):
        b.next_request()
    with pytest.raises(ValueError, match="never reported"):
        b.finish()
