"""The carry pool's state is validated fully and refused atomically: integer keys, informative rewards of width N."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mtgrpo_core import KnownFilterRate, RatioPreservingSampler, SamplerConfig
from mtgrpo_core.sampling.carry_pool import CarryPool

N = 4
PASS = np.array([0.5, 0.3, 0.7])


def _sampler(filtering: str = "lenient", correct_reward: float = 1.0) -> RatioPreservingSampler:
    config = SamplerConfig(
        16,
        N,
        planner="joint",
        carry_over=1,
        filtering=filtering,
        correct_reward=correct_reward,  # type: ignore[arg-type]
    )
    return RatioPreservingSampler(3, config, seed=0, estimator=KnownFilterRate(np.full(3, 0.2)))


def _run(sampler: RatioPreservingSampler, step: int, rng: np.random.Generator, first_key: int, cr: float) -> int:
    """One batch whose groups are reported with rewards (cr correct, 0 wrong); returns the next free key."""
    builder = sampler.begin(np.full(3, 1 / 3), step)
    key = first_key
    while (request := builder.next_request()) is not None:
        tasks = np.repeat(np.arange(3), request.counts)
        rewards = np.where(rng.random((tasks.size, N)) < PASS[tasks, None], cr, 0.0)
        builder.report_arrays(tasks, np.arange(key, key + tasks.size), rewards=rewards)
        key += tasks.size
    builder.finish()
    return key


def _kept_state(filtering: str = "lenient", correct_reward: float = 1.0) -> tuple[RatioPreservingSampler, Any]:
    sampler, rng, key = _sampler(filtering, correct_reward), np.random.default_rng(0), 0
    for step in range(3):
        key = _run(sampler, step, rng, key, correct_reward)
    state = json.loads(json.dumps(sampler.state_dict()))
    assert len(state["carry"]["keys"]) >= 2 and state["carry"]["rewards"] is not None, "nothing kept: shows nothing"
    return sampler, state


def _refused(sampler: RatioPreservingSampler, state: Any, error: type[Exception], message: str) -> None:
    """The sampler (and its carry pool directly) refuse the state and are left exactly as they were."""
    before = json.dumps(sampler.state_dict())
    with pytest.raises(error, match=message):
        sampler.load_state_dict(state)
    assert sampler.carry is not None
    with pytest.raises(error, match=message):
        sampler.carry.load_state_dict(state["carry"])
    assert json.dumps(sampler.state_dict()) == before


def _with_carry(state: Any, **changes: Any) -> Any:
    bad = json.loads(json.dumps(state))
    bad["carry"].update(changes)
    return bad


def test_a_kept_state_round_trips_and_continues_identically() -> None:
    sampler, state = _kept_state()
    twin = _sampler()
    twin.load_state_dict(state)
    assert twin.state_dict() == sampler.state_dict()
    assert _run(twin, 3, np.random.default_rng(1), 10_000, 1.0) == _run(
        sampler, 3, np.random.default_rng(1), 10_000, 1.0
    )
    assert twin.state_dict() == sampler.state_dict()


def test_fractional_or_non_integer_keys_are_refused_not_truncated() -> None:
    sampler, state = _kept_state()
    keys = state["carry"]["keys"]
    _refused(
        sampler,
        _with_carry(state, keys=[keys[0] + 0.5, *keys[1:]]),
        TypeError,
        r"state\['keys'\] must hold integers, got \d+\.5 of type float at index 0",
    )
    _refused(
        sampler, _with_carry(state, keys=[float(keys[0]), *keys[1:]]), TypeError, r"got \d+\.0 of type float at index 0"
    )
    _refused(
        sampler, _with_carry(state, keys=[True, *keys[1:]]), TypeError, r"state\['keys'\] must hold integers, got True"
    )
    _refused(sampler, _with_carry(state, keys="12"), TypeError, r"state\['keys'\] must be a list of integers, got '12'")
    _refused(sampler, _with_carry(state, retired=[1.5]), TypeError, r"state\['retired'\] must hold integers, got 1.5")
    _refused(
        sampler,
        _with_carry(state, key_dtype="float64"),
        ValueError,
        r"state\['key_dtype'\] is 'float64', expected a numpy integer dtype",
    )
    _refused(
        sampler,
        _with_carry(state, key_dtype="uint8", keys=[300] * len(keys)),
        ValueError,
        r"state\['keys'\] do not fit",
    )
    _refused(
        sampler, _with_carry(state, staleness=[1.5] * len(keys)), TypeError, r"state\['staleness'\] must hold integers"
    )


def test_kept_groups_without_signal_are_refused() -> None:
    sampler, state = _kept_state()
    rewards = state["carry"]["rewards"]
    flat = [[0.5] * N, *rewards[1:]]
    _refused(
        sampler,
        _with_carry(state, rewards=flat),
        ValueError,
        r"state\['rewards'\] row 0 is \[0.5, 0.5, 0.5, 0.5\], a group without signal: .* not all equal",
    )
    strict, state = _kept_state("strict", correct_reward=2.0)
    formatted = [[0.1, 0.0, 0.1, 0.0], *state["carry"]["rewards"][1:]]  # not all equal, but none correct
    _refused(
        strict, _with_carry(state, rewards=formatted), ValueError, r"row 0 .* some but not all == correct_reward 2.0"
    )


def test_rewards_of_another_width_or_length_are_refused() -> None:
    sampler, state = _kept_state()
    rewards = state["carry"]["rewards"]
    wide = [[*row, 0.0] for row in rewards]
    _refused(
        sampler,
        _with_carry(state, rewards=wide),
        ValueError,
        rf"state\['rewards'\] must have shape \(groups, N = {N}\), got \(\d+, {N + 1}\)",
    )
    narrow = [row[:-1] for row in rewards]
    _refused(sampler, _with_carry(state, rewards=narrow), ValueError, rf"got \(\d+, {N - 1}\)")
    _refused(
        sampler,
        _with_carry(state, rewards=rewards[1:]),
        ValueError,
        r"state holds \d+ kept groups .* expected \d+ of each",
    )
    _refused(
        sampler,
        _with_carry(state, rewards=[1.0] * len(rewards)),
        ValueError,
        r"must have shape \(groups, N = 4\), got \(\d+,\)",
    )


def test_a_pool_without_a_group_size_checks_the_table_only() -> None:
    pool = CarryPool(3, 1)
    state = {
        "kind": "carry_pool",
        "num_tasks": 3,
        "max_staleness": 1,
        "tasks": [0, 2],
        "keys": [7, 9],
        "rewards": [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
        "staleness": [1, 1],
        "retired": [3],
    }
    pool.load_state_dict(state)
    assert pool.offer().keys.tolist() == [7, 9] and pool.offer().rewards.shape == (2, 3)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="row 1 is"):
        pool.load_state_dict({**state, "rewards": [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]})
    assert pool.offer().rewards.tolist() == state["rewards"]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="filtering must be one of"):
        CarryPool(3, 1, group_size=4, filtering="loose")
