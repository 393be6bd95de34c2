"""Carry-over: informative surplus waits for later steps; no group is used twice or past the staleness bound."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtgrpo_core import KnownFilterRate, RatioPreservingSampler, SamplerConfig
from tests.sampler_sim import AcceptanceCaller

RATES = np.array([0.30, 0.15, 0.70])
WEIGHTS = np.array([0.46, 0.11, 0.43])


def _sampler(carry: int, planner: str = "joint", **kw: object) -> RatioPreservingSampler:
    config = SamplerConfig(32, 8, planner=planner, carry_over=carry, **kw)
    return RatioPreservingSampler(3, config, seed=0, estimator=KnownFilterRate(RATES))


@pytest.mark.parametrize("carry", [1, 2])
def test_bookkeeping_no_reuse_no_stale_groups_and_everything_released(carry: int) -> None:
    sampler, caller = _sampler(carry), AcceptanceCaller(RATES, seed=1)
    used: set[int] = set()
    alive: set[int] = set()  # reported and neither used nor released yet
    born: dict[int, int] = {}
    for step in range(60):
        first_new = caller.next_key
        batch = caller.run(sampler.begin(WEIGHTS, step))
        born.update({k: step for k in range(first_new, caller.next_key)})
        alive |= set(range(first_new, caller.next_key))
        keys = batch.keys.tolist()
        assert not used & set(keys), "a group was trained twice"
        assert all(k in alive for k in keys)
        assert batch.staleness is not None and batch.kept is not None and batch.released is not None
        assert [step - born[k] for k in keys] == batch.staleness.tolist()
        assert batch.staleness.max() <= carry
        assert all(caller.informative[k] for k in keys)
        used |= set(keys)
        alive -= set(keys) | set(batch.released.tolist())
        assert alive == set(batch.kept.tolist()), "every group is either trained, kept or released"
        assert all(step + 1 - born[k] <= carry for k in alive)
        assert np.array_equal(batch.report.realized_counts, batch.report.target_counts)


def test_carry_over_generates_less_for_the_same_batches() -> None:
    costs = {}
    for carry in (0, 1):
        sampler, caller = _sampler(carry), AcceptanceCaller(RATES, seed=2)
        reports = [caller.run(sampler.begin(WEIGHTS, step)).report for step in range(300)]
        used = sum(int(r.realized_counts.sum()) for r in reports)
        costs[carry] = sum(int(r.generated.sum()) for r in reports) / used
        tv = np.mean([0.5 * np.abs(r.realized_shares - WEIGHTS).sum() for r in reports])
        assert tv <= 0.02
    floor = float((WEIGHTS / (1 - RATES)).sum())  # 2.22 prompts generated per prompt used
    assert floor <= costs[1] < 0.85 * costs[0]


def test_state_round_trips_with_kept_groups() -> None:
    sampler, caller = _sampler(1), AcceptanceCaller(RATES, seed=3)
    for step in range(3):
        caller.run(sampler.begin(WEIGHTS, step))
    state = json.loads(json.dumps(sampler.state_dict()))
    assert len(state["carry"]["keys"]) > 0
    twin = _sampler(1)
    twin.load_state_dict(state)
    twin_caller = AcceptanceCaller(RATES, seed=4)
    twin_caller.next_key = caller.next_key
    caller = AcceptanceCaller(RATES, seed=4)
    caller.next_key = twin_caller.next_key
    a, b = caller.run(sampler.begin(WEIGHTS, 3)), twin_caller.run(twin.begin(WEIGHTS, 3))
    assert a.keys.tolist() == b.keys.tolist() and a.staleness.tolist() == b.staleness.tolist()
    bad = json.loads(json.dumps(state))
    bad["carry"]["staleness"] = [5] * len(bad["carry"]["staleness"])
    before = twin.state_dict()
    with pytest.raises(ValueError, match=r"state\['staleness'\] must be in \[1, 1\]"):
        twin.load_state_dict(bad)
    assert twin.state_dict() == before


def test_a_new_report_reusing_a_kept_key_is_refused_and_bad_settings_too() -> None:
    sampler, caller = _sampler(1), AcceptanceCaller(RATES, seed=5)
    batch = caller.run(sampler.begin(WEIGHTS, 0))
    assert batch.kept is not None and len(batch.kept) > 0
    builder = sampler.begin(WEIGHTS, 1)
    request = builder.next_request()
    assert request is not None
    task = int(np.flatnonzero(request.counts)[0])
    with pytest.raises(ValueError, match="reported twice"):
        builder.report_arrays([task], [int(batch.kept[0])], informative=np.array([True]))
    with pytest.raises(ValueError, match="carry_over must be >= 0, got -1"):
        SamplerConfig(8, 4, carry_over=-1)
    with pytest.raises(ValueError, match="carry_over=1 needs a planner that plans from what is still missing"):
        SamplerConfig(8, 4, carry_over=1)  # the paper planner asks M_os B whatever was carried
    bad = json.loads(json.dumps(sampler.state_dict()))
    bad["carry"]["keys"] = [bad["carry"]["keys"][0]] * len(bad["carry"]["keys"])
    if len(bad["carry"]["keys"]) > 1:
        with pytest.raises(ValueError, match=r"state\['keys'\] must be \d+ distinct integers"):
            sampler.load_state_dict(bad)


def test_a_key_trained_or_released_at_the_last_step_is_refused_when_reported_again() -> None:
    sampler, caller = _sampler(1), AcceptanceCaller(RATES, seed=7)
    batch = caller.run(sampler.begin(WEIGHTS, 0))
    assert batch.released is not None and len(batch.released) > 0
    for old in (int(batch.keys[0]), int(batch.released[0])):
        builder = sampler.begin(WEIGHTS, 1)
        request = builder.next_request()
        assert request is not None
        task = int(np.flatnonzero(request.counts)[0])
        with pytest.raises(ValueError, match=rf"keys \[{old}\] were trained or released at the last step"):
            builder.report_arrays([task], [old], informative=np.array([True]))
    restored = _sampler(1)
    restored.load_state_dict(json.loads(json.dumps(sampler.state_dict())))
    builder = restored.begin(WEIGHTS, 1)
    assert builder.next_request() is not None
    with pytest.raises(ValueError, match="reported again"):
        builder.report_arrays([task], [int(batch.keys[0])], informative=np.array([True]))


def test_retired_keys_are_found_whatever_the_two_key_dtypes() -> None:
    from mtgrpo_core.sampling.carry_pool import CarryPool

    pool = CarryPool(2, 1)
    big = np.array([2**64 - 1, 5], dtype=np.uint64)
    pool.store(np.zeros(0, np.int64), np.zeros(0, np.uint64), None, np.zeros(0, np.int64), big)
    pool.refuse_retired(np.array([4, 6], dtype=np.int64))  # none retired: accepted
    with pytest.raises(ValueError, match=r"keys \[5\] were trained or released"):
        pool.refuse_retired(np.array([5, 7], dtype=np.int8))
    with pytest.raises(ValueError, match=r"keys \[18446744073709551615\] were trained or released"):
        pool.refuse_retired(np.array([2**64 - 1], dtype=np.uint64))
    pool.refuse_retired(np.array([-1, -5], dtype=np.int64))  # negative keys beside uint64 ones: compared exactly
