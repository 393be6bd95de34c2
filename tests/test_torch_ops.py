"""Tensor ops of the torch backend: agreement with the numpy core, hand-computed gradients, per-task statistics."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

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
    got, counts = ops.task_means(after - before, tasks, k)
    want = task_improvement(before.numpy(), after.numpy(), tasks.numpy(), k, reduce="mean")
    np.testing.assert_allclose(got.numpy(), want, equal_nan=True, atol=1e-12)
    assert np.isnan(got[1].item()) and counts.tolist() == [6.0, 0.0, 6.0]
    sums, _ = ops.task_sums(after - before, tasks, k)
    want_sum = task_improvement(before.numpy(), after.numpy(), tasks.numpy(), k, reduce="sum")
    np.testing.assert_allclose(sums.numpy()[[0, 2]], want_sum[[0, 2]], atol=1e-12)


def _rank(rank: int, store_path: str, result_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    values = torch.tensor([1.0, 2.0, 3.0]) + 10 * rank
    tasks = torch.tensor([0, 1, 1]) if rank == 0 else torch.tensor([1, 1, 1])
    means, counts = ops.task_means(values, tasks, 3)
    if rank == 0:
        torch.save({"means": means, "counts": counts}, result_path)
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_task_statistics_all_reduce_over_two_gloo_ranks(tmp_path: Path) -> None:
    result = os.path.join(tmp_path, "result.pt")
    ctx = multiprocessing.get_context("spawn")
    ranks = [ctx.Process(target=_rank, args=(r, os.path.join(tmp_path, "store"), result)) for r in range(2)]
    for proc in ranks:
        proc.start()
    for proc in ranks:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in ranks] == [0, 0]
    got = torch.load(result)
    # task 0: [1]; task 1: [2, 3, 11, 12, 13]; task 2: none
    np.testing.assert_allclose(got["means"].numpy(), [1.0, 41 / 5, np.nan], equal_nan=True)
    assert got["counts"].tolist() == [1.0, 5.0, 0.0]


def test_task_means_without_distributed_is_local() -> None:
    assert not dist.is_initialized()
    means, counts = ops.task_means(torch.tensor([1.0, 3.0]), torch.tensor([1, 1]), 2)
    assert np.isnan(means[0].item()) and means[1].item() == 2.0 and counts.tolist() == [0.0, 2.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_ops_run_on_cuda_tensors() -> None:
    r = torch.from_numpy(_rewards(1, 4, 8)).cuda()
    adv = ops.group_advantages(r)
    assert adv.is_cuda
    np.testing.assert_allclose(adv.cpu().numpy(), np_group_advantages(r.cpu().numpy()), atol=1e-12)
    means, _ = ops.task_means(adv.reshape(-1), torch.arange(32, device="cuda") % 3, 3)
    assert means.is_cuda
