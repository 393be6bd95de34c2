"""The reference code's weight update (docs/fidelity.md): coupled Adam, clipped per-mini-batch I_k, the accuracy
moving average, scoring absent tasks. Expected numbers are worked by hand from priority_decay.py's arithmetic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.reference.scoring import ReferenceIWURule, RewardTerm
from mtgrpo_core.signals import minibatch_improvement
from mtgrpo_core.weighting import functions as wf
from mtgrpo_core.weighting.rules import IWURule

# --- the optimizer steps against torch ---


def test_adamw_step_matches_torch_adamw() -> None:
    import torch  # the reference implementation; imported here so only this test pays its import time

    rng = np.random.default_rng(2)
    xi0 = rng.normal(size=5)
    param = torch.tensor(xi0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([param], lr=0.025, weight_decay=1e-2)
    xi, state = xi0.copy(), wf.AdamWState.zeros(5)
    for step in range(60):
        grad = rng.normal(size=5) * (0.0 if step % 7 == 3 else 10.0 ** rng.integers(-4, 2))
        param.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
        xi, state = wf.adamw_step(xi, grad, state, lr=0.025, weight_decay=1e-2)
        np.testing.assert_allclose(xi, param.detach().numpy(), rtol=1e-12, atol=1e-15)
    assert state.step == 60


def test_coupled_adam_step_matches_torch_adam() -> None:
    import torch

    rng = np.random.default_rng(3)
    xi0 = rng.normal(size=5)
    param = torch.tensor(xi0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([param], lr=0.025, weight_decay=1e-2)  # priority_decay.py: Adam([w], weight_decay=gamma)
    xi, state = xi0.copy(), wf.AdamWState.zeros(5)
    for step in range(60):
        grad = rng.normal(size=5) * (0.0 if step % 7 == 3 else 10.0 ** rng.integers(-4, 2))
        param.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
        xi, state = wf.adamw_step(xi, grad, state, lr=0.025, weight_decay=1e-2, decoupled=False)
        np.testing.assert_allclose(xi, param.detach().numpy(), rtol=1e-12, atol=1e-15)


def test_coupled_decay_enters_the_moments_decoupled_decay_shrinks() -> None:
    # xi = 1, g = 0, lr 0.1, wd 0.5. Coupled (torch.optim.Adam): g' = g + wd xi = 0.5; m = 0.1 g' = 0.05,
    # v = 0.001 g'^2; bias-corrected mhat = 0.5, sqrt(vhat) = 0.5; xi = 1 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.9.
    # Decoupled (AdamW): xi * (1 - lr wd) = 0.95, and m = 0 gives no Adam step.
    coupled, _ = wf.adamw_step([1.0], [0.0], wf.AdamWState.zeros(1), 0.1, 0.5, decoupled=False)
    decoupled, _ = wf.adamw_step([1.0], [0.0], wf.AdamWState.zeros(1), 0.1, 0.5)
    assert coupled[0] == pytest.approx(1.0 - 0.1 * 0.5 / (0.5 + 1e-8), abs=1e-15)
    assert decoupled[0] == pytest.approx(0.95, abs=1e-15)
    with pytest.raises(TypeError, match="decoupled must be a bool"):
        wf.adamw_step([1.0], [0.0], wf.AdamWState.zeros(1), 0.1, 0.5, decoupled=1)  # type: ignore[arg-type]


def test_adamw_step_survives_gradients_whose_square_overflows() -> None:
    xi, state = np.zeros(2), wf.AdamWState.zeros(2)
    xi, state = wf.adamw_step(xi, np.array([1e300, -1e300]), state, lr=0.025, weight_decay=0.0)
    np.testing.assert_allclose(xi, [-0.025, 0.025], rtol=1e-9)
    xi, state = wf.adamw_step(xi, np.array([1.0, -1.0]), state, lr=0.025, weight_decay=0.0)
    assert np.isfinite(xi).all() and np.isfinite(state.exp_avg_rms).all()
    assert xi[0] < -0.025  # momentum still drives the step: the state did not freeze at inf


# --- the reward term: accuracy moving average (update_batch_acc, batch_acc_decay_rate 0.5, from 0) ---


def test_accuracy_average_by_hand() -> None:
    # a <- 0.5 a + 0.5 acc at present tasks: (0, 0, 0) -> (0.3, 0.1, 0); task 2 absent keeps 0.
    a = wf.accuracy_average([0.0, 0.0, 0.0], [0.6, 0.2, np.nan], [True, True, False], 0.5)
    np.testing.assert_allclose(a, [0.3, 0.1, 0.0], atol=1e-15)
    # then (0.5 * 0.3 + 0.5 * 0.8, 0.1 kept (absent), 0.5 * 0 + 0.5 * 1.0) = (0.55, 0.1, 0.5)
    a = wf.accuracy_average(a, [0.8, np.nan, 1.0], [True, False, True], 0.5)
    np.testing.assert_allclose(a, [0.55, 0.1, 0.5], atol=1e-15)
    with pytest.raises(ValueError, match=r"accuracy must be in \[0, 1\] at present tasks"):
        wf.accuracy_average([0.0], [1.5], [True], 0.5)
    with pytest.raises(ValueError, match=r"decay must be in \[0.0, 1.0\)"):
        wf.accuracy_average([0.0], [0.5], [True], 1.0)


# --- the rule: one Adam step per mini-batch with clip(I_m) + lam * a (priority_decay.py update, task_diff_bias) ---


def reference_rule(k: int, lam: float = 0.2) -> IWURule:
    return ReferenceIWURule(
        k, lam=lam, coupled_decay=True, weight_decay=1e-5, improvement_clip=0.1, reward_signal="accuracy_ema",
        score_absent=True,
    )  # fmt: skip


def test_two_minibatch_updates_by_hand() -> None:
    rule = reference_rule(3)
    signals = TaskSignals.build(reward=[0.5, 0.3, 0.4], accuracy=[0.6, 0.2, 0.4], improvement=[0.0, 0.0, 0.0])
    # a = 0.5 * acc = (0.3, 0.1, 0.2). Mini-batch 1: I = (0.25, -0.05, 0), clipped to 0.1: (0.1, -0.05, 0);
    # s = I + 0.2 a = (0.16, -0.03, 0.04); z = 1/3: mean 0.17 / 3; g = (s - mean) / 3
    # = (0.0344444, -0.0288889, -0.0055556). First Adam step (xi = 0, so the coupled decay adds 0):
    # xi = -0.025 g / (|g| + 1e-8) = (-0.0249999927, 0.0249999913, 0.0249999550).
    # Mini-batch 2: I = (-0.3, 0.02, 0.05) -> (-0.1, 0.02, 0.05); s = (-0.04, 0.04, 0.09);
    # z = softmax(xi) = (0.3223163, 0.3388418, 0.3388418); g = z (s - z.s) = (-0.0229352, 0.0029967, 0.0199388),
    # plus 1e-5 xi; m = 0.9 m + 0.1 g, v = 0.999 v + 0.001 g^2, bias-corrected over 2 steps:
    # xi = (-0.0286268132, 0.0397415268, 0.0115726467).
    z = rule.update_minibatches(signals, [[0.25, -0.05, 0.0], [-0.3, 0.02, 0.05]])
    np.testing.assert_allclose(rule.logits, [-0.0286268132, 0.0397415268, 0.0115726467], atol=1e-10)
    np.testing.assert_allclose(z, [0.3213597, 0.3440990, 0.3345413], atol=1e-7)
    np.testing.assert_allclose(rule.reward_term.average, [0.3, 0.1, 0.2], atol=1e-15)
    assert rule.state_dict()["adam_step"] == 2  # two optimizer steps in one training step


def test_absent_task_is_scored_with_its_average_and_zero_improvement() -> None:
    def make(score_absent: bool) -> IWURule:
        return ReferenceIWURule(
            2, lam=1.0, lr=1.0, optimizer="sgd", weight_decay=0.0, improvement_clip=None,
            reward_signal="accuracy_ema", score_absent=score_absent,
        )  # fmt: skip

    scored, left_out = make(True), make(False)
    for rule in (scored, left_out):
        # step 1: a = 0.5 acc = (0.4, 0.2); s = a; g = 0.5 (s - 0.3) = (0.05, -0.05); xi = -g
        rule.update(TaskSignals.build(reward=[0.8, 0.4], accuracy=[0.8, 0.4], improvement=[0.0, 0.0]))
        np.testing.assert_allclose(rule.logits, [-0.05, 0.05], atol=1e-15)
        # step 2: task 1 absent. a = (0.5 * 0.4 + 0.5 * 0.8, 0.2) = (0.6, 0.2); s = (0.1 + 0.6, 0 + 0.2)
        rule.update(TaskSignals.build(reward=[0.5, np.nan], accuracy=[0.8, np.nan], improvement=[0.1, np.nan]))
    # reference: z = softmax(-0.05, 0.05) = (0.4750208, 0.5249792); z.s = 0.4375104;
    # g = z (s - z.s) = (0.1246880, -0.1246880); xi = (-0.1746880, 0.1746880)
    np.testing.assert_allclose(scored.logits, [-0.17468802, 0.17468802], atol=1e-8)
    # the paper's convention: the absent task is left out, the lone present task's centred gradient is 0
    np.testing.assert_allclose(left_out.logits, [-0.05, 0.05], atol=1e-15)
    np.testing.assert_allclose(scored.reward_term.average, [0.6, 0.2], atol=1e-15)


def test_rule_matches_the_reference_loop_written_in_torch() -> None:
    """The reference's update written with torch (our words): Adam(lr 0.025, weight_decay gamma) on w; per
    mini-batch delta = clamp(I_m, -0.1, 0.1) + lam * a; w.grad = d softmax(w) / dw . delta; opt.step()."""
    import torch

    k, lam, rng = 4, 0.3, np.random.default_rng(5)
    w = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.025, weight_decay=1e-5)
    avg = torch.zeros(k, dtype=torch.float64)
    rule = reference_rule(k, lam)
    for _ in range(12):
        acc = rng.uniform(0, 1, k)
        rows = rng.normal(0, 0.2, (4, k))
        avg = 0.5 * avg + 0.5 * torch.tensor(acc)
        for row in rows:
            delta = torch.clamp(torch.tensor(row), -0.1, 0.1) + lam * avg
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                (d,) = torch.autograd.grad(torch.softmax(w, dim=-1), w, grad_outputs=delta)
            w.grad = d
            opt.step()
        rule.update_minibatches(TaskSignals.build(reward=acc, accuracy=acc, improvement=rows.sum(0)), rows)
        np.testing.assert_allclose(rule.logits, w.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_update_is_one_minibatch_and_refusals_leave_the_rule_unchanged() -> None:
    one, many = reference_rule(3), reference_rule(3)
    signals = TaskSignals.build(reward=[0.5, 0.3, 0.4], accuracy=[0.6, 0.2, 0.4], improvement=[0.05, -0.02, 0.3])
    one.update(signals)
    many.update_minibatches(signals, [[0.05, -0.02, 0.3]])
    assert one.state_dict() == many.state_dict()
    before = many.state_dict()
    with pytest.raises(ValueError, match=r"improvements must have shape \(M >= 1, 3\)"):
        many.update_minibatches(signals, np.zeros((0, 3)))
    with pytest.raises(ValueError, match="improvements at present tasks must be finite"):
        many.update_minibatches(signals, [[0.1, 0.1, 0.1], [np.inf, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"signals.accuracy is None, but IWURule\(reward_signal='accuracy_ema'\)"):
        many.update(TaskSignals.build(reward=[0.5, 0.3, 0.4], improvement=[0.0, 0.0, 0.0]))
    assert many.state_dict() == before


def test_reference_options_state_round_trip_and_bad_arguments() -> None:
    rule = reference_rule(3)
    rule.update(TaskSignals.build(reward=[0.5, 0.3, 0.4], accuracy=[0.6, 0.2, 0.4], improvement=[0.05, -0.02, 0.3]))
    state = json.loads(json.dumps(rule.state_dict()))
    assert state["accuracy_average"] == pytest.approx([0.3, 0.1, 0.2])
    twin = ReferenceIWURule(3, **state["config"])
    twin.load_state_dict(state)
    assert twin.state_dict() == rule.state_dict()
    with pytest.raises(ValueError, match=r"state\['kind'\] is 'iwu-ref', expected 'iwu'"):
        IWURule(3).load_state_dict(state)  # the paper's rule refuses the reference rule's state
    with pytest.raises(TypeError, match="coupled_decay"):
        IWURule(3, coupled_decay=True)  # type: ignore[call-arg]  # the paper's rule has the paper's options only
    bad = {**state, "accuracy_average": [0.3, 0.1, 1.5]}
    with pytest.raises(ValueError, match=r"accuracy_average'\] must hold 3 values in \[0, 1\]"):
        twin.load_state_dict(bad)
    assert "accuracy_average" not in IWURule(3).state_dict()  # default rules keep the old state layout
    with pytest.raises(ValueError, match=r"reward_signal must be one of \['reward', 'accuracy_ema'\]"):
        ReferenceIWURule(3, reward_signal="accuracy")
    with pytest.raises(ValueError, match=r"reward_decay must be in \[0.0, 1.0\), got 1.0"):
        ReferenceIWURule(3, reward_signal="accuracy_ema", reward_decay=1.0)
    with pytest.raises(ValueError, match="score_absent=True needs reward_signal='accuracy_ema'"):
        ReferenceIWURule(3, score_absent=True)
    with pytest.raises(TypeError, match="coupled_decay must be a bool"):
        ReferenceIWURule(3, coupled_decay=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="score_absent must be a bool"):
        RewardTerm(3, "accuracy_ema", 0.5, 1)  # type: ignore[arg-type]


# --- I_k per mini-batch (dp_actor.py update_policy: per-task sums of new - old loss, per mini-batch) ---


def test_minibatch_improvement_by_hand() -> None:
    task = [0, 0, 1, 2, 0, 1]
    minibatch = [0, 0, 0, 0, 1, 1]
    before = [0.1, 0.2, 0.0, 0.3, 0.5, 0.1]
    after = [0.3, 0.1, 0.05, 0.3, 0.4, 0.4]
    # after - before = (0.2, -0.1, 0.05, 0, -0.1, 0.3). Mini-batch 0: task 0 sums 0.2 - 0.1 = 0.1, task 1 0.05,
    # task 2 0. Mini-batch 1: task 0 -0.1, task 1 0.3, task 2 has no sample: 0 (task_wise_diff.get(group, 0)).
    # The reference negates new - old LOSS; these are objectives (minus the loss), so no sign change here.
    rows = minibatch_improvement(before, after, task, minibatch, 3)
    np.testing.assert_allclose(rows, [[0.1, 0.05, 0.0], [-0.1, 0.3, 0.0]], atol=1e-15)
    with pytest.raises(ValueError, match="minibatch is empty"):
        minibatch_improvement([], [], [], [], 3)
    with pytest.raises(ValueError, match="minibatch indices must be >= 0"):
        minibatch_improvement([0.0], [0.0], [0], [-1], 3)
    with pytest.raises(ValueError, match="before and after must have the same length"):
        minibatch_improvement([0.0, 1.0], [0.0], [0, 0], [0, 0], 3)
    assert math.isclose(float(rows.sum()), 0.35, abs_tol=1e-12)
