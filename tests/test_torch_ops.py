"""Tensor ops of the torch backend: agreement with the numpy core, hand-computed gradients, per-task statistics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mtgrpo_backends.torch import ops
from mtgrpo_core import group_advantages as np_group_advantages
from mtgrpo_core import task_improvement


def _rewards(seed: int, p: int, n: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    rng = np.random.default_rng(seed)
    r = rng.choice([0.0, 0.1, 1.0], size=(p, n))
    r[0] = 1.0  # an all-equal group: advantages exactly 0
    return r


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("grpo", {}),
        ("grpo", {"std": "biased"}),
        ("grpo", {"eps": 1e-4}),
        ("dr_grpo", {}),
        ("rloo", {}),
    ],
)
@pytest.mark.parametrize(("p", "n"), [(5, 8), (3, 2), (1, 16)])
def test_group_advantages_match_numpy_core(method: str, options: dict[str, Any], p: int, n: int) -> None:
    r = _rewards(p * n, p, n)
    want = np_group_advantages(r, method, **options)
    got = ops.group_advantages(torch.from_numpy(r), method, **options)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    got32 = ops.group_advantages(torch.from_numpy(r).float(), method, **options)
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-5, atol=1e-5)


def test_group_advantages_group_of_one_and_bad_input() -> None:
    r = np.array([[0.3], [1.0]])
    np.testing.assert_array_equal(ops.group_advantages(torch.from_numpy(r)).numpy(), np_group_advantages(r))
    with pytest.raises(ValueError, match="rloo"):
        ops.group_advantages(torch.from_numpy(r), "rloo")
    with pytest.raises(ValueError, match="method"):
        ops.group_advantages(torch.zeros(2, 2), "ppo")
    with pytest.raises(ValueError, match=r"\(P, N\)"):
        ops.group_advantages(torch.zeros(4))


def _case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two sequences of two tokens: A = +1 with ratios (1, 1.5); A = -1 with ratios (1, 0.5)."""
    old = torch.log(torch.tensor([[0.5, 0.2], [0.4, 0.3]], dtype=torch.float64))
    ratios = torch.tensor([[1.0, 1.5], [1.0, 0.5]], dtype=torch.float64)
    logp = (old + ratios.log()).requires_grad_(True)
    return logp, old, torch.tensor([1.0, -1.0], dtype=torch.float64)


def test_surrogate_gradient_token_mean_by_hand() -> None:
    logp, old, adv = _case()
    mask = torch.ones(2, 2, dtype=torch.float64)
    out = ops.clipped_surrogate_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    (grad,) = torch.autograd.grad(out.loss, logp)
    # objective: min(r A, clip(r) A). Token (0,1): r = 1.5 > 1.28 with A > 0 -> clipped, value 1.28, grad 0.
    # Token (1,1): r = 0.5 < 0.8 with A < 0 -> clipped, value -0.8, grad 0. Others: d(r A)/dlogp = r A.
    assert out.loss.item() == pytest.approx(-(1.0 + 1.28 - 1.0 - 0.8) / 4)
    np.testing.assert_allclose(grad.numpy(), [[-0.25, 0.0], [0.25, 0.0]], atol=1e-12)
    assert out.clip_fraction.item() == pytest.approx(0.5)


def test_surrogate_gradient_seq_mean_with_padding_by_hand() -> None:
    logp, old, adv = _case()
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    out = ops.clipped_surrogate_loss(logp, old, adv, mask, aggregation="seq-mean")
    (grad,) = torch.autograd.grad(out.loss, logp)
    # seq-mean: row 0 tokens weigh 1/2 * 1/2, row 1's single real token weighs 1/2 * 1.
    assert out.loss.item() == pytest.approx(-((1.0 + 1.28) / 2 + (-1.0)) / 2)
    np.testing.assert_allclose(grad.numpy(), [[-0.25, 0.0], [0.5, 0.0]], atol=1e-12)


def test_kl_term_k3_gradient_by_hand() -> None:
    logp, old, _ = _case()
    ref = torch.log(torch.tensor([[0.25, 0.2], [0.4, 0.6]], dtype=torch.float64))
    mask = torch.ones(2, 2, dtype=torch.float64)
    out = ops.clipped_surrogate_loss(logp, old, torch.zeros(2, dtype=torch.float64), mask, ref_logp=ref, kl_coef=0.5)
    (grad,) = torch.autograd.grad(out.loss, logp)
    d = (ref - logp).detach()
    want_kl = (torch.exp(d) - d - 1).mean()
    assert out.kl.item() == pytest.approx(want_kl.item())
    # d/dlogp of k3 = 1 - exp(ref - logp); token-mean over 4 tokens, times kl_coef
    np.testing.assert_allclose(grad.numpy(), (0.5 * (1 - torch.exp(d)) / 4).numpy(), atol=1e-12)


def test_surrogate_refuses_bad_shapes_and_options() -> None:
    logp, old, adv = _case()
    mask = torch.ones(2, 2)
    with pytest.raises(ValueError, match="share a shape"):
        ops.clipped_surrogate_loss(logp, old[:, :1], adv, mask)
    with pytest.raises(ValueError, match="aggregation"):
        ops.clipped_surrogate_loss(logp, old, adv, mask, aggregation="sum")
    with pytest.raises(ValueError, match="clip_low"):
        ops.clipped_surrogate_loss(logp, old, adv, mask, clip_low=1.5)


def test_improvement_matches_numpy_core() -> None:
    rng = np.random.default_rng(0)
    rows, t, k = 12, 5, 3
    old = torch.from_numpy(rng.normal(-1.0, 0.3, size=(rows, t)))
    new = old + torch.from_numpy(rng.normal(0.0, 0.2, size=(rows, t)))
    adv = torch.from_numpy(rng.normal(size=rows))
    mask = torch.from_numpy((rng.random((rows, t)) < 0.8).astype(np.float64))
    tasks = torch.from_numpy(np.array([0, 0, 0, 0, 2, 2, 2, 2, 2, 0, 2, 0]))
    before = ops.sequence_surrogate(old, old, adv, mask)
    after = ops.sequence_surrogate(new, old, adv, mask)
    np.testing.assert_allclose(before.numpy(), adv.numpy() * (mask.sum(1) > 0).numpy())
    got = task_improvement(before.numpy(), after.numpy(), tasks.numpy(), k)
    for task in (0, 2):
        rows_k = tasks.numpy() == task
        assert got[task] == pytest.approx(float((after - before).numpy()[rows_k].mean()), abs=1e-12)
    assert np.isnan(got[1])


def test_sequence_surrogate_clips_the_ratio_and_averages_over_tokens() -> None:
    advantages, old = torch.tensor([1.0, -1.0]), torch.zeros(2, 2)
    mask = torch.tensor([[1, 1], [1, 0]])
    assert ops.sequence_surrogate(old, old, advantages, mask).tolist() == [1.0, -1.0]
    logps = torch.log(torch.tensor([[2.0, 1.0], [0.5, 9.0]]))
    # row 0: (min(2, 1.28) + 1) / 2; row 1: min(-0.5, -0.8) on its one unmasked token
    out = ops.sequence_surrogate(logps, old, advantages, mask)
    assert torch.allclose(out, torch.tensor([1.14, -0.8]))
    sequence_level = ops.sequence_surrogate(logps, old, advantages, mask, level="sequence")
    assert torch.allclose(sequence_level, torch.tensor([min(2**0.5, 1.28), -0.8]))
    with pytest.raises(ValueError, match="level must be one of"):
        ops.sequence_surrogate(logps, old, advantages, mask, level="batch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_ops_run_on_cuda_tensors() -> None:
    r = torch.from_numpy(_rewards(1, 4, 8)).cuda()
    adv = ops.group_advantages(r)
    assert adv.is_cuda
    np.testing.assert_allclose(adv.cpu().numpy(), np_group_advantages(r.cpu().numpy()), atol=1e-12)
    assert ops.sequence_surrogate(adv, adv, adv[:, 0], torch.ones_like(adv)).is_cuda


def test_an_estimator_registered_in_the_core_reaches_the_torch_loop() -> None:
    from mtgrpo_backends.torch.loop import train_step
    from mtgrpo_backends.torch.model import CharGPT
    from mtgrpo_backends.torch.state import make_state
    from mtgrpo_core.advantages import register_estimator
    from tests.test_torch_loop import TINY, TOK, _config, _suite

    calls: list[tuple[int, ...]] = []

    @register_estimator("test-doubled-dr-grpo")
    def doubled(rewards: np.ndarray, groups: Any) -> np.ndarray:
        calls.append(rewards.shape)
        return 2.0 * (rewards - rewards.mean(axis=1, keepdims=True))

    config = _config("grpo", steps=1, advantage="test-doubled-dr-grpo")  # checked against the registry as it is now
    state = make_state(config, CharGPT(TINY, seed=0), _suite(), TOK)
    train_step(state, config, _suite(), TOK)
    assert calls and calls[0][1] == config.group_size
    with pytest.raises(ValueError, match=r"advantage must be one of \[.*'test-doubled-dr-grpo'.*\], got 'nope'"):
        _config("grpo", steps=1, advantage="nope")
