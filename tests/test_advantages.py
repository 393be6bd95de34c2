"""Group advantages, zero-gradient masks and token-level broadcast: loop references, layouts, bad input."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgrpo_core.advantages import (
    ADVANTAGE_ESTIMATORS,
    group_advantages,
    ragged_group_advantages,
    ragged_zero_gradient_mask,
    register_estimator,
    token_level_advantages,
    zero_gradient_mask,
)

FAST = settings(max_examples=40, deadline=None)
REWARD = st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(-50, 50, allow_nan=False))


def _groups_of(group_ids: np.ndarray) -> dict[int, list[int]]:
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids.tolist()):
        members[g].append(i)
    return members


def loop_advantages(rewards: np.ndarray, group_ids: np.ndarray, method: str, std: str = "unbiased", eps=1e-6):
    """Straightforward per-group reference, one group at a time."""
    out = np.zeros(len(rewards))
    everything = rewards.tolist()
    batch_mean = math.fsum(everything) / len(everything)
    batch_ss = math.fsum((x - batch_mean) ** 2 for x in everything)
    batch_n = len(everything) - 1 if std == "unbiased" and len(everything) > 1 else len(everything)
    batch_std = math.sqrt(batch_ss / batch_n)
    for idx in _groups_of(group_ids).values():
        vals = [float(rewards[i]) for i in idx]
        n = len(vals)
        mean = math.fsum(vals) / n
        ss = math.fsum((x - mean) ** 2 for x in vals)
        group_std = math.sqrt(ss / (n - 1 if std == "unbiased" and n > 1 else n))
        for i in idx:
            r = float(rewards[i])
            if method == "grpo":
                out[i] = (r - mean) / (group_std + eps)
            elif method == "dr_grpo":
                out[i] = r - mean
            elif method == "rloo":
                out[i] = r - (math.fsum(vals) - r) / (n - 1)
            else:
                out[i] = (r - mean) / (batch_std + eps)
    return out


def loop_zero_gradient(rewards: np.ndarray, group_ids: np.ndarray, filter: str, correct: float = 1.0):
    members = _groups_of(group_ids)
    keys = sorted(members)
    flags = []
    for g in keys:
        vals = [float(rewards[i]) for i in members[g]]
        if filter == "lenient":
            flags.append(all(x == vals[0] for x in vals))
        else:
            hits = [x == correct for x in vals]
            flags.append(all(hits) or not any(hits))
    return np.array(keys), np.array(flags)


@st.composite
def ragged_batch(draw, min_size: int = 1):
    sizes = draw(st.lists(st.integers(min_size, 7), min_size=1, max_size=10))
    labels = draw(st.lists(st.integers(-(10**12), 10**12), min_size=len(sizes), max_size=len(sizes), unique=True))
    ids = np.repeat(np.array(labels, dtype=np.int64), sizes)
    rewards = np.array(draw(st.lists(REWARD, min_size=len(ids), max_size=len(ids))))
    order = np.array(draw(st.permutations(range(len(ids)))), dtype=np.int64)
    return rewards[order], ids[order]


@st.composite
def dense_batch(draw, min_n: int = 1):
    p = draw(st.integers(1, 8))
    n = draw(st.integers(min_n, 8))
    return np.array(draw(st.lists(REWARD, min_size=p * n, max_size=p * n))).reshape(p, n)


METHOD_OPTIONS = [
    ("grpo", {"std": "unbiased"}),
    ("grpo", {"std": "biased", "eps": 1e-4}),
    ("dr_grpo", {}),
    ("batch_std", {"std": "unbiased"}),
    ("batch_std", {"std": "biased"}),
]


@pytest.mark.parametrize(("method", "options"), METHOD_OPTIONS)
@FAST
@given(batch=ragged_batch())
def test_ragged_matches_loop_reference(method, options, batch):
    rewards, ids = batch
    got = ragged_group_advantages(rewards, ids, method, **options)
    want = loop_advantages(rewards, ids, method, **options)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-7)


@FAST
@given(batch=ragged_batch(min_size=2))
def test_rloo_matches_loop_reference(batch):
    rewards, ids = batch
    np.testing.assert_allclose(
        ragged_group_advantages(rewards, ids, "rloo"), loop_advantages(rewards, ids, "rloo"), atol=1e-9
    )


@pytest.mark.parametrize(("method", "options"), [*METHOD_OPTIONS, ("rloo", {})])
@FAST
@given(rewards=dense_batch(min_n=2), data=st.data())
def test_dense_and_ragged_agree_on_any_row_order(method, options, rewards, data):
    p, n = rewards.shape
    dense = group_advantages(rewards, method, **options)
    order = np.array(data.draw(st.permutations(range(p * n))), dtype=np.int64)
    ids = np.repeat(np.arange(p) * 7919 - 50, n)  # arbitrary, partly negative ids
    ragged = ragged_group_advantages(rewards.reshape(-1)[order], ids[order], method, **options)
    np.testing.assert_allclose(ragged, dense.reshape(-1)[order], rtol=1e-9, atol=1e-7)


@FAST
@given(batch=ragged_batch())
def test_group_ids_are_labels_only(batch):
    rewards, ids = batch
    _, ranks = np.unique(ids, return_inverse=True)  # small non-negative ids take the no-sort path
    np.testing.assert_allclose(ragged_group_advantages(rewards, ids), ragged_group_advantages(rewards, ranks))


@FAST
@given(rewards=dense_batch(min_n=2))
def test_grpo_groups_are_centred_and_scaled(rewards):
    adv = group_advantages(rewards, std="biased", eps=1e-12)
    np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-6)
    spread = rewards.std(axis=1) > 1e-3
    np.testing.assert_allclose(adv[spread].std(axis=1), 1.0, rtol=1e-6)


def test_grpo_example_and_std_choice():
    rewards = np.array([[1.0, 0.0, 0.0, 0.0]])
    mean, biased, unbiased = 0.25, math.sqrt(0.1875), math.sqrt(0.25)
    np.testing.assert_allclose(group_advantages(rewards), (rewards - mean) / (unbiased + 1e-6))
    np.testing.assert_allclose(group_advantages(rewards, std="biased", eps=1e-4), (rewards - mean) / (biased + 1e-4))
    np.testing.assert_allclose(group_advantages(rewards, "rloo"), [[1.0, -1 / 3, -1 / 3, -1 / 3]])
    np.testing.assert_allclose(group_advantages(rewards, "dr_grpo"), rewards - mean)


def test_batch_std_uses_group_mean_and_batch_std():
    rewards = np.array([[1.0, 0.0], [1.0, 1.0]])
    batch_std = np.std(rewards, ddof=1)
    want = (rewards - rewards.mean(axis=1, keepdims=True)) / (batch_std + 1e-6)
    np.testing.assert_allclose(group_advantages(rewards, "batch_std"), want)


def test_grpo_default_matches_torch_std_formula():
    torch = pytest.importorskip("torch")
    rewards = np.random.default_rng(0).choice([0.0, 0.1, 1.0], size=(32, 8))
    t = torch.tensor(rewards)
    want = (t - t.mean(dim=1, keepdim=True)) / (t.std(dim=1, keepdim=True) + 1e-6)  # verl's formula
    np.testing.assert_allclose(group_advantages(rewards), want.numpy(), atol=1e-12)


def test_singleton_groups_get_zero_advantage_and_rloo_refuses_them():
    rewards = np.array([0.7, 1.0, 0.0])
    ids = np.array([5, 9, 9])
    for method in ("grpo", "dr_grpo", "batch_std"):
        assert ragged_group_advantages(rewards, ids, method)[0] == 0.0
    assert np.all(group_advantages([[0.3], [0.9]]) == 0.0)
    with pytest.raises(ValueError, match=r"rloo.*at least 2 rollouts.*size 1"):
        ragged_group_advantages(rewards, ids, "rloo")
    with pytest.raises(ValueError, match=r"rloo.*size 1"):
        group_advantages([[0.3], [0.9]], "rloo")


def test_equal_rewards_give_zero_advantage():
    adv = group_advantages(np.full((3, 16), 0.1))
    np.testing.assert_allclose(adv, 0.0, atol=1e-9)


def test_registry_lists_estimators_and_refuses_duplicates():
    assert set(ADVANTAGE_ESTIMATORS) >= {"grpo", "dr_grpo", "rloo", "batch_std"}
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("grpo")(lambda rewards, groups: rewards)


def test_custom_estimator_runs_on_both_layouts():
    name = "test_centred_twice"
    if name not in ADVANTAGE_ESTIMATORS:

        @register_estimator(name)
        def centred_twice(rewards, groups):
            return 2.0 * (rewards - groups.mean(rewards))

    rewards = np.array([[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(group_advantages(rewards, name), [[1.0, -1.0], [0.0, 0.0]])
    np.testing.assert_allclose(ragged_group_advantages(rewards.ravel(), [0, 0, 1, 1], name), [1, -1, 0, 0])


@pytest.mark.parametrize("filter", ["lenient", "strict"])
@FAST
@given(batch=ragged_batch())
def test_ragged_zero_gradient_mask_matches_loop(filter, batch):
    rewards, ids = batch
    keys, mask = ragged_zero_gradient_mask(rewards, ids, filter)
    want_keys, want_mask = loop_zero_gradient(rewards, ids, filter)
    np.testing.assert_array_equal(keys, want_keys)
    np.testing.assert_array_equal(mask, want_mask)


@pytest.mark.parametrize("filter", ["lenient", "strict"])
@FAST
@given(rewards=dense_batch())
def test_dense_zero_gradient_mask_matches_loop(filter, rewards):
    p, n = rewards.shape
    _, want = loop_zero_gradient(rewards.ravel(), np.repeat(np.arange(p), n), filter)
    np.testing.assert_array_equal(zero_gradient_mask(rewards, filter), want)


def test_zero_gradient_filters_differ_as_the_paper_says():
    rewards = np.array(
        [
            [1.0, 1.0, 1.0],  # all correct: both filters drop it
            [0.1, 0.0, 0.0],  # all incorrect but unequal: strict drops, lenient keeps
            [0.1, 0.1, 0.1],  # all equal: both drop
            [1.0, 0.1, 0.0],  # mixed: both keep
        ]
    )
    assert zero_gradient_mask(rewards, "lenient").tolist() == [True, False, True, False]
    assert zero_gradient_mask(rewards, "strict").tolist() == [True, True, True, False]
    assert zero_gradient_mask(rewards * 2, "strict", correct_reward=2.0).tolist() == [True, True, True, False]
    keys, mask = ragged_zero_gradient_mask(rewards.ravel(), np.repeat([40, 30, 20, 10], 3), "strict")
    assert keys.tolist() == [10, 20, 30, 40]
    assert mask.tolist() == [False, True, True, True]


def test_token_level_advantages_broadcast_and_mask():
    adv = np.array([1.5, -2.0])
    mask = np.array([[True, True, False], [True, False, False]])
    got = token_level_advantages(adv, mask)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[1.5, 1.5, 0.0], [-2.0, 0.0, 0.0]])
    as_int = token_level_advantages(adv, mask.astype(np.int64), dtype=np.float64)
    assert as_int.dtype == np.float64
    np.testing.assert_array_equal(as_int, got)
    buffer = np.full((2, 3), 9.0, dtype=np.float32)
    assert token_level_advantages(adv, mask, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, got)


def test_token_level_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    got = token_level_advantages(torch.tensor([0.5, -1.0]), mask)
    np.testing.assert_array_equal(got, [[0.5, 0.5, 0.0], [-1.0, -1.0, -1.0]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rewards_are_refused(bad):
    with pytest.raises(ValueError, match=r"rewards must be finite.*index \(1, 0\)"):
        group_advantages([[0.0, 1.0], [bad, 1.0]])
    with pytest.raises(ValueError, match="rewards must be finite"):
        ragged_group_advantages([0.0, bad], [0, 0])
    with pytest.raises(ValueError, match="rewards must be finite"):
        zero_gradient_mask([[bad, 1.0]])
    with pytest.raises(ValueError, match="advantages must be finite"):
        token_level_advantages([bad], np.ones((1, 2), dtype=bool))


def test_bad_shapes_and_lengths_are_refused():
    with pytest.raises(ValueError, match="rewards must have 2 dimension"):
        group_advantages([0.0, 1.0])
    with pytest.raises(ValueError, match=r"at least one group.*shape \(0, 4\)"):
        group_advantages(np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"shape \(3, 0\)"):
        group_advantages(np.zeros((3, 0)))
    with pytest.raises(ValueError, match="rewards and group_ids must have the same length, got 3 and 2"):
        ragged_group_advantages([0.0, 1.0, 0.5], [0, 0])
    with pytest.raises(ValueError, match="at least one rollout"):
        ragged_group_advantages([], [])
    with pytest.raises(TypeError, match="group_ids must hold integers"):
        ragged_group_advantages([0.0, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="rewards and group_ids must have the same length"):
        ragged_zero_gradient_mask([0.0, 1.0], [0])
    with pytest.raises(ValueError, match="advantages and response_mask must have the same length, got 2 and 3"):
        token_level_advantages([1.0, 2.0], np.ones((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="response_mask must have 2 dimensions"):
        token_level_advantages([1.0], np.ones(4, dtype=bool))
    with pytest.raises(TypeError, match="response_mask must be bool, integer or float"):
        token_level_advantages([1.0], np.array([["a"]]))
    with pytest.raises(ValueError, match="out must be a C-contiguous float32 array of shape"):
        token_level_advantages([1.0], np.ones((1, 4), dtype=bool), out=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        token_level_advantages([1.0], np.ones((1, 4), dtype=bool), dtype=np.int32)


def test_bad_options_are_refused():
    rewards = [[0.0, 1.0]]
    with pytest.raises(ValueError, match=r"method must be one of \['batch_std', 'dr_grpo', .*'rloo'.*got 'ppo'"):
        group_advantages(rewards, "ppo")
    with pytest.raises(ValueError, match=r"std must be one of \['biased', 'unbiased'\], got 'sample'"):
        group_advantages(rewards, std="sample")
    with pytest.raises(ValueError, match=r"eps must be in \(0.0, inf\], got 0.0"):
        group_advantages(rewards, eps=0.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'eps'"):
        group_advantages(rewards, "dr_grpo", eps=1e-4)
    with pytest.raises(ValueError, match=r"filter must be one of \['lenient', 'strict'\], got 'loose'"):
        zero_gradient_mask(rewards, "loose")
    with pytest.raises(ValueError, match="correct_reward must be finite"):
        ragged_zero_gradient_mask([1.0], [0], "strict", correct_reward=float("nan"))


def test_a_group_of_equal_rewards_gets_exactly_zero_even_with_a_tiny_eps():
    # the float mean of three 0.1 rewards misses them by an ulp; eps 1e-12 used to magnify that into -1.4e-5 each
    rewards = np.array([[0.1, 0.1, 0.1], [1.0, 0.0, 0.5]])
    adv = group_advantages(rewards, std="biased", eps=1e-12)
    assert (adv[0] == 0.0).all() and adv[1].std() == pytest.approx(1.0)
    ragged = ragged_group_advantages(rewards.ravel(), [0, 0, 0, 1, 1, 1], std="biased", eps=1e-12)
    np.testing.assert_array_equal(ragged.reshape(2, 3), adv)
