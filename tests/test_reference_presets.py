"""The reference presets (mt-grpo-ref, mt-grpo-ref9, dapo-ref, dapo-ref9, grpo-ref): each setting checked against
a small case worked by hand from the reference code (github rsshyam/MT-GRPO; docs/fidelity.md names the lines)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest

from mtgrpo_core.advantages import zero_gradient_mask
from mtgrpo_core.controller import Controller
from mtgrpo_core.methods import parse_method
from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.reference.presets import (
    ReferencePresetWarning,
    reference_filter_rate,
    reference_improvement_clip,
    reference_max_rounds,
)
from mtgrpo_core.sampling.acceptance import EMAFilterRate, inflation
from mtgrpo_core.signals import StepFacts, step_signals

COMMON = {"oversample": 3.0, "max_inflation": 5.0, "targets": "multinomial", "planner": "paper-ref"}


def test_mt_grpo_ref_is_the_3_task_scripts() -> None:
    ctrl = Controller.from_method("mt-grpo-ref:0.25", num_tasks=3, batch_size=32, group_size=8)
    cfg = ctrl.sampler.config
    # run_mt-grpo_0.25.sh: pure_acc_filter default True (strict), ensure_famo_ratio=True, no efficient_sampling,
    # max_num_gen_batches=10 (9 resampling rounds), rejection_sample_multiplier=3.0; no guard, no carry-over.
    assert (cfg.filtering, cfg.ratio_constraint, cfg.acceptance_aware, cfg.max_rounds) == ("strict", True, False, 9)
    assert {k: getattr(cfg, k) for k in COMMON} == COMMON and cfg.guard_floor == 0.0 and cfg.carry_over == 0
    rule = ctrl.rule.state_dict()["config"]
    # trainer.sec.bandit.lr=0.025, gamma=1e-5 in torch.optim.Adam, clip 0.1 * (1e-6 / 1e-6), batch_acc EMA 0.5
    assert rule == {
        "lam": 0.25,
        "lr": 0.025,
        "optimizer": "adamw",
        "weight_decay": 1e-5,
        "improvement_clip": 0.1,
        "coupled_decay": True,
        "reward_signal": "accuracy_ema",
        "score_absent": True,
    }
    assert ctrl.sampler.estimator.state_dict()["alpha"] == 0.1
    assert parse_method("mt-grpo-ref").rule_kwargs["lam"] == 0.2


def test_mt_grpo_ref9_is_the_9_task_scripts() -> None:
    ctrl = Controller.from_method("mt-grpo-ref9:1.2", num_tasks=9, batch_size=16, group_size=8)
    cfg = ctrl.sampler.config
    # run_mt-grpo_1.2.sh: pure_acc_filter=False, efficient_sampling on, max_num_gen_batches=2 (1 resampling round)
    assert (cfg.filtering, cfg.ratio_constraint, cfg.acceptance_aware, cfg.max_rounds) == ("lenient", True, True, 1)
    rule = ctrl.rule.state_dict()["config"]
    # gamma=1e-4, delta_threshold=0.2
    assert (rule["lam"], rule["weight_decay"], rule["improvement_clip"]) == (1.2, 1e-4, 0.2)
    assert parse_method("mt-grpo-ref9").rule_kwargs["lam"] == 0.1


def test_baseline_presets() -> None:
    for name, filtering, rounds in (("dapo-ref", "strict", 9), ("dapo-ref9", "lenient", 1)):
        cfg = Controller.from_method(name, 3 if name == "dapo-ref" else 9, 16, 4).sampler.config
        assert (cfg.filtering, cfg.ratio_constraint, cfg.acceptance_aware, cfg.max_rounds) == (
            filtering,
            False,
            False,
            rounds,
        )
    grpo = Controller.from_method("grpo-ref", 3, 16, 4)
    # run_grpo.sh: rejection_sample=False; every prompt's task drawn i.i.d. (np.random.choice in sample_arms)
    assert (grpo.sampler.config.filtering, grpo.sampler.config.targets) == ("none", "multinomial")
    assert grpo.needs == frozenset() and parse_method("grpo-ref").improvement_reduce is None


def test_max_rounds_and_clip_by_hand() -> None:
    # ray_trainer.py fit: num_gen_batches counts the first round; generation goes on while it is < max.
    assert (reference_max_rounds(10), reference_max_rounds(2)) == (9, 1)
    # calculate_delta: clamp to +-threshold * (actor lr / 1e-6)
    assert reference_improvement_clip() == 0.1 and reference_improvement_clip(0.2) == 0.2
    assert reference_improvement_clip(0.1, 5e-6) == pytest.approx(0.5)
    ctrl = Controller.from_method("mt-grpo-ref", 3, 8, 4, rule_kwargs={"actor_lr": 3e-6})
    assert ctrl.rule.improvement_clip == pytest.approx(0.3)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="method 'dapo-ref' has no I_k clip"):
        Controller.from_method("dapo-ref", 3, 8, 4, rule_kwargs={"actor_lr": 3e-6})
    with pytest.raises(ValueError, match=r"actor_lr must be in \(0.0, inf\]"):
        Controller.from_method("mt-grpo-ref", 3, 8, 4, rule_kwargs={"actor_lr": 0.0})


def test_filter_rate_estimate_by_hand() -> None:
    est = reference_filter_rate(2)
    assert isinstance(est, EMAFilterRate) and est.filter_rate.tolist() == [0.0, 0.0]  # np.zeros at the start
    # update_filtered_ratio: rho <- 0.9 rho + 0.1 observed. Observed (5/10, 0/4) -> (0.05, 0)
    est.update(generated=[10, 4], accepted=[5, 4])
    np.testing.assert_allclose(est.filter_rate, [0.05, 0.0], atol=1e-15)
    # observed (10/10, 2/4) -> (0.9 * 0.05 + 0.1, 0.1 * 0.5) = (0.145, 0.05)
    est.update(generated=[10, 4], accepted=[0, 2])
    np.testing.assert_allclose(est.filter_rate, [0.145, 0.05], atol=1e-15)
    # sample_arms_efficient_sampling: mult = min(clip(1 - rho, 1e-2, 1) ** -1, 5): rho 0, 0.5, 0.9, 1 -> 1, 2, 5, 5
    np.testing.assert_allclose(inflation(np.array([0.0, 0.5, 0.9, 1.0]), 5.0), [1.0, 2.0, 5.0, 5.0])


def test_filters_by_hand() -> None:
    groups = np.array(
        [
            [1.0, 1.0, 1.0, 1.0],  # all correct
            [0.0, 0.0, 0.0, 0.0],  # all zero
            [0.1, 0.0, 0.1, 0.0],  # no correct answer, rewards differ
            [0.1, 0.1, 0.1, 0.1],  # all formatted-but-wrong
            [1.0, 0.1, 0.0, 0.0],  # informative
        ]
    )
    # 3 tasks (pure_acc_filter True): drop all == 0, all == 1, or no reward >= 1 - 1e-6.
    reference3 = [True, True, True, True, False]
    assert zero_gradient_mask(groups, "strict").tolist() == reference3
    # 9 tasks (pure_acc_filter False): drop only all == 0 and all == 1. The preset's "lenient" filter also drops
    # the all-0.1 group (zero advantage, but the reference trains on it): the one documented difference.
    reference9 = [True, True, False, False, False]
    lenient = zero_gradient_mask(groups, "lenient").tolist()
    assert [a != b for a, b in zip(lenient, reference9, strict=True)] == [False, False, False, True, False]


def test_overrides_are_warned_or_refused_by_name() -> None:
    spec = parse_method("mt-grpo-ref:0.2")
    with pytest.warns(ReferencePresetWarning, match=r"sets improvement_clip=0.1 .*give improvement_clip=0.2"):
        rule = spec.build_rule(3, improvement_clip=0.2)  # the lambda 0.3 9-task script's kind of change
    assert rule.improvement_clip == 0.2  # type: ignore[attr-defined]
    with pytest.warns(ReferencePresetWarning, match="sets weight_decay=1e-05"):
        spec.build_rule(3, weight_decay=1e-4)
    with pytest.raises(ValueError, match=r"sets coupled_decay=True .*Use method 'mt-grpo' to change it"):
        spec.build_rule(3, coupled_decay=False)
    with pytest.raises(ValueError, match=r"sets optimizer='adamw' .*give optimizer='sgd'"):
        spec.build_rule(3, optimizer="sgd")
    with pytest.raises(ValueError, match="sets reward_signal='accuracy_ema'"):
        spec.build_rule(3, reward_signal="reward")
    with pytest.warns(ReferencePresetWarning, match=r"sets filtering='strict' .*give filtering='lenient'"):
        spec.check_sampler_overrides({"filtering": "lenient", "confidence": 0.5})  # confidence: not a preset setting
    with pytest.raises(ValueError, match=r"sets planner='paper-ref' .*sampler settings give planner='posterior'"):
        spec.check_sampler_overrides({"planner": "posterior"})
    with pytest.raises(ValueError, match="Use method 'dapo' to change it"):
        parse_method("dapo-ref").check_sampler_overrides({"ratio_constraint": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec.build_rule(3, lam=0.3, weight_decay=1e-5)  # the method's own argument, and an equal value: silent
        spec.check_sampler_overrides({"max_rounds": 9})
        parse_method("mt-grpo").check_sampler_overrides({"filtering": "strict"})
    with pytest.warns(ReferencePresetWarning, match="the reference's 9-task scripts .* are method 'mt-grpo-ref9'"):
        spec.build_rule(9)
    with pytest.warns(ReferencePresetWarning, match="are method 'dapo-ref'"):
        Controller.from_method("dapo-ref9", 3, 8, 4)


def test_reference_controller_runs_and_restores_from_json() -> None:
    def run(ctrl: Controller, start: int) -> list[np.ndarray]:
        out = []
        for step in range(start, start + 3):
            acc = np.array([0.7, 0.4, 0.1]) + 0.01 * step
            steps = [[0.02, -0.1, 0.0], [0.0, -0.2, 0.0]]
            signals = TaskSignals.build(reward=acc, accuracy=acc, improvement=np.sum(steps, 0), improvement_steps=steps)
            ctrl.end_step(signals)
            out.append(ctrl.weights)
        return out

    ctrl = Controller.from_method("mt-grpo-ref:0.2", 3, 8, 4, seed=1)
    run(ctrl, 0)
    state = json.loads(json.dumps(ctrl.state_dict()))
    twin = Controller.from_method("mt-grpo-ref:0.2", 3, 8, 4, seed=7)
    twin.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(run(ctrl, 3), run(twin, 3), strict=True))
    assert ctrl.weights[2] > ctrl.weights[0]  # weight moves to the weak task
    with pytest.raises(ValueError, match=r"signals.accuracy is None"):
        ctrl.end_step(TaskSignals.build(reward=[0.5] * 3, improvement=[0.0] * 3, improvement_steps=[[0.0] * 3]))


def test_the_iwu_presets_update_once_per_mini_batch_from_the_signal_path() -> None:
    # two mini-batches; task 2 has no sample in the second one (its I_k there is 0, as in dp_actor.py)
    facts = StepFacts(
        rollout_task=[0, 0, 1, 1, 2, 2],
        rollout_reward=[1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
        surrogate_before=[0.1, 0.2, 0.0, 0.3, -0.1],
        surrogate_after=[0.3, 0.1, 0.4, 0.5, 0.0],
        surrogate_task=[0, 1, 2, 0, 1],
        surrogate_minibatch=[0, 0, 0, 1, 1],
    )
    signals = step_signals(facts, 3, improvement_reduce="sum")
    assert signals.improvement_steps is not None
    np.testing.assert_allclose(signals.improvement_steps, [[0.2, -0.1, 0.4], [0.2, 0.1, 0.0]])
    np.testing.assert_allclose(signals.improvement, [0.4, 0.0, 0.4])
    ctrl = Controller.from_method("mt-grpo-ref:0.2", 3, 8, 4)
    assert ctrl.minibatch_updates and not Controller.from_method("mt-grpo:0.2", 3, 8, 4).minibatch_updates
    twin = parse_method("mt-grpo-ref:0.2").build_rule(3)
    signals = replace(signals, accuracy=np.array([0.5, 1.0, 0.0]))
    np.testing.assert_array_equal(ctrl.end_step(signals), twin.update_minibatches(signals, signals.improvement_steps))
    with pytest.raises(ValueError, match=r"once per PPO mini-batch .*StepFacts.surrogate_minibatch"):
        ctrl.end_step(replace(signals, improvement_steps=None))
    with pytest.raises(ValueError, match="surrogate_minibatch is given without"):
        step_signals(replace(facts, surrogate_before=None, surrogate_after=None), 3)
