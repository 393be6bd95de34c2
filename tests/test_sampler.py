"""Example-based and bad-input tests of RP-SAMPLER, its filter-rate estimators and count schemes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtgrpo_core.sampling.acceptance import BetaFilterRate, EMAFilterRate, KnownFilterRate, inflation, plan_requests
from mtgrpo_core.sampling.config import SamplerConfig
from mtgrpo_core.sampling.planners import (
    PLANNER_REGISTRY,
    DapoPlanner,
    NoFilterPlanner,
    PaperPlanner,
    PlanView,
    PosteriorPlanner,
    planner_for,
    planner_names,
    register_planner,
)
from mtgrpo_core.sampling.sampler import RatioPreservingSampler
from mtgrpo_core.sampling.targets import apportioned_counts, multinomial_counts
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
    b.report_arrays(np.zeros(n, dtype=int), list(range(n)), rewards=rewards)
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


def test_filter_rate_update_from_reports() -> None:
    s = sampler()
    b = s.begin(Z3, 0)
    key = 0
    while (req := b.next_request()) is not None:
        tasks = np.repeat(np.arange(3), req.counts)
        keys = np.arange(key, key + tasks.shape[0])
        key += tasks.shape[0]
        b.report_arrays(tasks, keys, informative=(tasks != 2) | (keys % 2 == 0))
    assert len(b.finish()) == 32
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
    with pytest.raises(TypeError, match=r"keys must hold integers.*'a'"):
        b.report_arrays([0], ["a"], informative=np.array([True]))
    assert (b.outstanding == req.counts).all()  # the refused calls changed nothing
    b.report_arrays([0], [7], informative=np.array([True]))
    with pytest.raises(ValueError, match="keys holds 7, reported twice"):
        b.report_arrays([0], np.array([7], dtype=np.uint8), informative=np.array([True]))
    with pytest.raises(ValueError, match="not reported yet"):
        b.next_request()
    with pytest.raises(ValueError, match="before finish"):
        b.finish()


# -- keys -----------------------------------------------------------------------------------------------------------
def one_task_batch(*reports: object) -> object:
    """Report each key list as its own round-0 chunk of one task (no filtering); return the finished batch."""
    total = sum(len(r) for r in reports)  # type: ignore[arg-type]
    b = RatioPreservingSampler(1, SamplerConfig(batch_size=total, group_size=2, filtering="none")).begin([1.0], 0)
    assert b.next_request() is not None
    for keys in reports:
        n = len(keys)  # type: ignore[arg-type]
        b.report_arrays(np.zeros(n, dtype=int), keys, informative=np.ones(n, dtype=bool))
    return b.finish()


INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_keys_come_back_exactly_in_their_dtype(dtype: type[np.integer]) -> None:
    info = np.iinfo(dtype)
    values = [int(info.max), int(info.min), 5, int(info.max) - 1]
    batch = one_task_batch(np.array(values, dtype=dtype))
    assert batch.keys.dtype == dtype  # type: ignore[attr-defined]
    assert batch.keys.tolist() == values  # type: ignore[attr-defined]


def test_uint64_keys_at_or_above_2_63_are_not_negative() -> None:
    values = [2**63, 2**64 - 1, 2**63 + 12345]
    assert one_task_batch(np.array(values, dtype=np.uint64)).keys.tolist() == values  # type: ignore[attr-defined]
    batch = one_task_batch([2**63, 0], [2**64 - 1])  # Python ints: uint64 when a key needs it
    assert batch.keys.dtype == np.uint64 and batch.keys.tolist() == [2**63, 0, 2**64 - 1]  # type: ignore[attr-defined]
    batch = one_task_batch(range(3), [-(2**63)])
    assert batch.keys.dtype == np.int64 and batch.keys.tolist() == [0, 1, 2, -(2**63)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("reports", "dtype"),
    [
        ((np.array([-1, 2], np.int8), np.array([200, 3], np.uint8)), np.int16),  # numpy's promotion
        ((np.array([-1], np.int64), np.array([5], np.uint64)), np.int64),  # all fit in int64
        ((np.array([1], np.int8), np.array([2**63], np.uint64)), np.uint64),  # none negative
        ((np.array([2**63], np.uint64), [7]), np.uint64),
    ],
)
def test_mixed_key_dtypes_follow_the_rule(reports: tuple[object, ...], dtype: type[np.integer]) -> None:
    batch = one_task_batch(*reports)
    assert batch.keys.dtype == dtype  # type: ignore[attr-defined]
    assert batch.keys.tolist() == [int(k) for r in reports for k in r]  # type: ignore[attr-defined, union-attr]


def test_key_mix_no_integer_dtype_holds_is_refused_and_changes_nothing() -> None:
    b = RatioPreservingSampler(1, SamplerConfig(batch_size=3, group_size=2, filtering="none")).begin([1.0], 0)
    assert b.next_request() is not None
    b.report_arrays([0], np.array([-1], dtype=np.int64), informative=np.array([True]))
    with pytest.raises(ValueError, match=r"keys mixes the negative key -1 with the key 9223372036854775808 >= 2\*\*63"):
        b.report_arrays([0], np.array([2**63], dtype=np.uint64), informative=np.array([True]))
    with pytest.raises(ValueError, match="keys mixes the negative key -2"):
        b.report_arrays([0, 0], [-2, 2**63], informative=np.array([True, True]))
    assert b.outstanding.tolist() == [2]
    b.report_arrays([0, 0], np.array([3, 2**62], dtype=np.uint64), informative=np.array([True, True]))
    assert b.finish().keys.tolist() == [-1, 3, 2**62]


@pytest.mark.parametrize(
    ("keys", "error", "match"),
    [
        (["a"], TypeError, r"keys must hold integers .*got 'a' of type str at index 0"),
        ([1, 2.0], TypeError, r"keys must hold integers .*got 2.0 of type float at index 1"),
        (np.array([1.5]), TypeError, r"keys must hold integers .*got dtype float64"),
        ([True], TypeError, r"keys must hold integers .*got True of type bool"),
        (np.array([True]), TypeError, r"keys must hold integers .*got dtype bool"),
        ([(0, 1)], TypeError, r"keys must hold integers .*got \(0, 1\) of type tuple"),
        ("ab", TypeError, r"keys must be a 1-D sequence of integers .*got 'ab'"),
        (3, TypeError, r"keys must be a 1-D sequence of integers .*got 3"),
        (np.array([[1]]), ValueError, r"keys must have 1 dimension\(s\), got shape \(1, 1\)"),
        ([2**64], ValueError, r"keys holds 18446744073709551616, outside every numpy integer dtype"),
    ],
)
def test_non_integer_keys_are_refused(keys: object, error: type[Exception], match: str) -> None:
    b = RatioPreservingSampler(1, SamplerConfig(batch_size=1, group_size=2, filtering="none")).begin([1.0], 0)
    assert b.next_request() is not None
    with pytest.raises(error, match=match):
        b.report_arrays([0], keys, informative=np.array([True]))  # type: ignore[arg-type]


# -- state ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("planner", "estimator"),
    [("paper", None), ("posterior", None), ("paper", "beta"), ("posterior", "ema"), ("paper", "known")],
)
def test_state_survives_json_and_continues_identically(planner: str, estimator: str | None) -> None:
    def make(seed: int) -> RatioPreservingSampler:
        est = {
            None: None,
            "beta": BetaFilterRate(3, forgetting=0.7),
            "ema": EMAFilterRate(3, alpha=0.3),
            "known": KnownFilterRate(RATES3),
        }[estimator]
        config = SamplerConfig(batch_size=32, group_size=8, planner=planner, targets="multinomial")
        return RatioPreservingSampler(3, config, seed=seed, estimator=est)

    a = make(5)
    for step in range(3):
        AcceptanceCaller(RATES3, step).run(a.begin(Z3, step))
    text = json.dumps(a.state_dict())
    b = make(0)
    b.load_state_dict(json.loads(text))
    assert json.dumps(b.state_dict()) == text
    for step in range(3, 6):
        ba = AcceptanceCaller(RATES3, step).run(a.begin(Z3, step))
        bb = AcceptanceCaller(RATES3, step).run(b.begin(Z3, step))
        assert ba.keys.tolist() == bb.keys.tolist() and ba.tasks.tolist() == bb.tasks.tolist()
        assert np.array_equal(ba.report.generated, bb.report.generated)
    assert np.array_equal(a.estimator.filter_rate, b.estimator.filter_rate)


def test_estimator_states_are_json_native_and_checked() -> None:
    ema, beta, known = EMAFilterRate(2), BetaFilterRate(2), KnownFilterRate([0.1, 0.2])
    for est in (ema, beta, known):
        est.update([4, 2], [1, 2])
        state = json.loads(json.dumps(est.state_dict()))
        fresh = type(est)(2) if not isinstance(est, KnownFilterRate) else KnownFilterRate([0.0, 0.0])
        fresh.load_state_dict(state)
        assert fresh.filter_rate.tolist() == est.filter_rate.tolist()
        array_state = {k: np.asarray(x) if isinstance(x, list) else x for k, x in state.items()}
        fresh.load_state_dict(array_state)  # numpy arrays still load
    with pytest.raises(ValueError, match=r"state\['rho'\] must have 2 entries \(one per task\), got 3"):
        ema.load_state_dict({**ema.state_dict(), "rho": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match=r"state\['rho'\] must hold values in \[0, 1.0\], got \[1.5, 0.0\]"):
        known.load_state_dict({**known.state_dict(), "rho": [1.5, 0.0]})
    with pytest.raises(ValueError, match=r"state\['forgetting'\] must be in \[0.0, 1.0\], got 2.0"):
        beta.load_state_dict({**beta.state_dict(), "forgetting": 2.0})
    with pytest.raises(ValueError, match=r"state must hold 'accepted'"):
        beta.load_state_dict({k: x for k, x in beta.state_dict().items() if k != "accepted"})


# -- planners -------------------------------------------------------------------------------------------------------
def test_config_switches_pick_the_planner() -> None:
    def cfg(**kw: object) -> SamplerConfig:
        return SamplerConfig(batch_size=8, group_size=4, **kw)  # type: ignore[arg-type]

    assert type(planner_for(cfg())) is PaperPlanner
    assert type(planner_for(cfg(planner="posterior"))) is PosteriorPlanner
    assert type(planner_for(cfg(ratio_constraint=False, planner="posterior"))) is DapoPlanner
    assert type(planner_for(cfg(filtering="none", planner="posterior"))) is NoFilterPlanner
    assert "dapo" not in planner_names() and {"paper", "posterior"} <= set(planner_names())
    with pytest.raises(ValueError, match="planner must be one of"):
        cfg(planner="dapo")  # chosen by ratio_constraint=False, not by name


class TwiceTheDeficit:
    """A user planner: request 2 * deficit each round; keep the first B accepted."""

    def __init__(self, config: SamplerConfig) -> None:
        self.batch_size = config.batch_size

    def plan(self, view: PlanView, rng: np.random.Generator) -> np.ndarray:
        return 2 * view.deficit

    def select(
        self,
        tasks: np.ndarray,
        accepted: np.ndarray,
        targets: np.ndarray,
        rng: np.random.Generator,
        carried: np.ndarray,
    ):  # type: ignore[no-untyped-def]
        return accepted[: self.batch_size]


def test_a_registered_planner_is_used_without_touching_the_builder() -> None:
    register_planner("twice-the-deficit", TwiceTheDeficit, estimator=BetaFilterRate)
    try:
        with pytest.raises(ValueError, match="already a registered planner"):
            register_planner("twice-the-deficit", TwiceTheDeficit)
        s = sampler(planner="twice-the-deficit")
        assert isinstance(s.estimator, BetaFilterRate)
        b = s.begin(Z3, 0)
        req = b.next_request()
        assert req is not None and np.array_equal(req.counts, 2 * b.targets)
        caller = AcceptanceCaller(RATES3, 0)
        caller.answer(b, req)
        batch = caller.run(b)
        assert len(batch) == 32 and batch.report.rounds >= 2
    finally:
        PLANNER_REGISTRY.pop("twice-the-deficit")
