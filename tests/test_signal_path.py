"""The one signal path: every backend turns the same step into identical TaskSignals; rules declare their needs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtgrpo_backends.simulated.bench import step_facts as simulated_facts
from mtgrpo_backends.simulated.policy import Groups
from mtgrpo_backends.torch.loop import step_facts as torch_facts
from mtgrpo_backends.torch.rollout import GeneratedGroup
from mtgrpo_backends.trl.step_facts import step_facts as trl_facts
from mtgrpo_backends.trl.step_facts import with_surrogate
from mtgrpo_core import (
    Controller,
    StepFacts,
    TaskSignals,
    build_rule,
    check_needs,
    group_advantages,
    register_rule,
    step_signals,
    with_stand_ins,
)
from mtgrpo_core.methods import RULES
from mtgrpo_core.weighting.rules import FixedRule, IWURule

N = 4
GROUP_TASK = np.array([0, 1, 2, 0, 1, 2, 0])
REWARDS = np.array(
    [
        [1.0, 0.1, 0.0, 1.0],
        [0.1, 0.1, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],  # task 2 is never informative: present, never trained
        [1.0, 1.0, 0.1, 1.0],
        [0.0, 1.0, 0.0, 0.1],
        [0.1, 0.1, 0.1, 0.1],
        [1.0, 1.0, 1.0, 1.0],  # generated, filtered
    ]
)
TRAINED = np.array([0, 1, 3, 4])


def _fixed_step() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    adv = group_advantages(REWARDS[TRAINED])
    after = adv + np.random.default_rng(0).normal(0.0, 0.05, size=adv.shape)
    return adv, adv.copy(), after


def _reference() -> StepFacts:
    adv, before, after = _fixed_step()
    sample_task = np.repeat(GROUP_TASK[TRAINED], N)
    return StepFacts(
        rollout_task=np.repeat(GROUP_TASK, N),
        rollout_reward=REWARDS.ravel(),
        sample_task=sample_task,
        sample_advantage=adv.ravel(),
        surrogate_before=before.ravel(),
        surrogate_after=after.ravel(),
    )


def _simulated() -> StepFacts:
    adv, _, after = _fixed_step()
    g = len(GROUP_TASK)
    everything = Groups(
        task=GROUP_TASK,
        solvable=np.ones(g, dtype=bool),
        offset=np.zeros(g),
        prob=np.full(g, 0.5),
        format_prob=np.full(g, 0.5),
        correct=REWARDS == 1.0,
        formatted=REWARDS == 0.1,
    )
    return simulated_facts(everything.rollouts(), everything.take(TRAINED), adv, adv, after)


def _torch() -> StepFacts:
    adv, before, after = _fixed_step()
    groups = [
        GeneratedGroup(int(t), [1, 2], torch.zeros(N, 3, dtype=torch.long), torch.ones(N, 3), r)
        for t, r in zip(GROUP_TASK, REWARDS, strict=True)
    ]
    row_task = torch.tensor(np.repeat(GROUP_TASK[TRAINED], N))
    rollouts = np.concatenate([np.full(N, g.task) for g in groups]), np.concatenate([g.rewards for g in groups])
    return torch_facts(rollouts, row_task, torch.from_numpy(adv.ravel()), before.ravel(), after.ravel())


def _trl() -> StepFacts:
    adv, before, after = _fixed_step()
    inert = 5  # a top-up group masked out of the loss: its rows are in the batch but not trained
    row_ids = np.concatenate([np.arange(g * N, (g + 1) * N) for g in [*TRAINED, inert]])
    row_adv = np.concatenate([adv.ravel(), np.zeros(N)])
    facts = trl_facts(GROUP_TASK, REWARDS, GROUP_TASK[row_ids // N], row_ids, row_adv, TRAINED)
    tasks = np.repeat(GROUP_TASK[TRAINED], N).astype(float)
    rows = np.stack([before.ravel(), after.ravel(), tasks, np.ones(tasks.shape)], axis=1)
    empty = np.array([[0.0, 0.0, 2.0, 0.0]])  # a completion without tokens: not a sample of I_k
    return with_surrogate(facts, [np.concatenate([rows, empty])])


def _same(a: TaskSignals, b: TaskSignals) -> bool:
    fields = ("present", "reward", "improvement", "mean_abs_advantage", "accuracy")
    return a.untrained == b.untrained and all(
        np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True) for f in fields
    )


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_every_backend_gives_identical_signals_for_the_same_step(reduce: str) -> None:
    want = step_signals(_reference(), 3, improvement_reduce=reduce)
    for name, facts in (("simulated", _simulated()), ("torch", _torch()), ("trl", _trl())):
        got = step_signals(facts, 3, improvement_reduce=reduce)
        assert _same(got, want), name
    # and the values are the paper's definitions
    np.testing.assert_allclose(want.reward, [REWARDS[k == GROUP_TASK].mean() for k in range(3)])
    np.testing.assert_allclose(want.accuracy, [(REWARDS[k == GROUP_TASK] == 1.0).mean() for k in range(3)])
    adv, before, after = _fixed_step()
    task = np.repeat(GROUP_TASK[TRAINED], N)
    diff = (after - before).ravel()
    expected = [diff[task == k].mean() if reduce == "mean" else diff[task == k].sum() for k in (0, 1)]
    np.testing.assert_allclose(want.improvement[:2], expected)
    np.testing.assert_allclose(want.mean_abs_advantage[:2], [np.abs(adv.ravel()[task == k]).mean() for k in (0, 1)])
    assert want.untrained == (2,) and want.improvement[2] == 0.0 and want.mean_abs_advantage[2] == 0.0


def test_absent_task_is_absent_and_unmeasured_signals_are_none() -> None:
    facts = StepFacts(rollout_task=[0, 0], rollout_reward=[1.0, 0.0])
    s = step_signals(facts, 2)
    assert s.present.tolist() == [True, False] and s.improvement is None and s.mean_abs_advantage is None
    assert s.reward[0] == 0.5 and s.accuracy[0] == 0.5


def test_bad_facts_are_refused_with_the_argument_named() -> None:
    with pytest.raises(TypeError, match="facts must be a StepFacts, got dict"):
        step_signals({}, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"surrogate_before and facts\.surrogate_after must be given together"):
        step_signals(StepFacts([0], [1.0], sample_task=[0], surrogate_before=[0.0]), 1)
    with pytest.raises(ValueError, match="sample_task is None"):
        step_signals(StepFacts([0], [1.0], sample_advantage=[0.5]), 1)
    carried_only = step_signals(StepFacts([0], [1.0], sample_task=[1], sample_advantage=[0.5]), 2)
    assert carried_only.present.tolist() == [True, False]  # trained on carried groups only: absent this step
    with pytest.raises(ValueError, match=r"task_ids holds unknown task id 3; expected ids in \[0, 2\)"):
        step_signals(StepFacts([3], [1.0]), 2)
    with pytest.raises(ValueError, match="rewards must be finite"):
        step_signals(StepFacts([0], [float("nan")]), 1)
    with pytest.raises(ValueError, match=r"reduce must be one of \['mean', 'sum'\], got 'avg'"):
        step_signals(_reference(), 3, improvement_reduce="avg")


def test_rules_declare_needs_and_the_controller_enforces_them() -> None:
    assert IWURule.needs == {"improvement"} and FixedRule.needs == frozenset()
    ctrl = Controller.from_method("mt-grpo:0.2", 3, 8, 4)
    with pytest.raises(ValueError, match=r"rule IWURule needs signals \['improvement'\], but they are None"):
        ctrl.end_step(TaskSignals.build(reward=[0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"rule IWURule needs \['improvement'\], which backend verl does not"):
        check_needs(ctrl.needs, ("mean_abs_advantage",), "IWURule", "verl")
    with pytest.raises(ValueError, match=r"declares needs \['gradient'\]"):
        check_needs({"gradient"}, (), "Mine", "torch")


class NoNeeds:
    """A user rule that forgot to declare `needs`."""

    def __init__(self, num_tasks: int) -> None:
        self.num_tasks = num_tasks
        self.weights = np.full(num_tasks, 1.0 / num_tasks)


class HalfHalf(FixedRule):
    """A user rule: fixed weights, reachable as "tests.test_signal_path:HalfHalf"."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks, np.full(num_tasks, 1.0 / num_tasks))


def test_registry_builds_rules_by_name_and_module_path() -> None:
    assert {"iwu", "minimax", "sec", "uniform", "fixed"} <= set(RULES)
    fixed = build_rule("fixed", 3, weights=[0.5, 0.3, 0.2])
    np.testing.assert_allclose(fixed.weights, [0.5, 0.3, 0.2])
    ctrl = Controller.from_method("tests.test_signal_path:HalfHalf", 2, 8, 4)
    assert isinstance(ctrl.rule, HalfHalf) and ctrl.sampler.config.ratio_constraint
    with pytest.raises(ValueError, match=r"rule must be one of \[.*\] or 'module:Class', got 'nope'"):
        build_rule("nope", 2)
    with pytest.raises(ValueError, match="cannot import 'Missing'"):
        build_rule("tests.test_signal_path:Missing", 2)
    with pytest.raises(TypeError, match="has no `needs` attribute"):
        build_rule("tests.test_signal_path:NoNeeds", 2)
    with pytest.raises(TypeError, match=r"rule 'fixed' \(FixedRule\) refused arguments \{\}"):
        build_rule("fixed", 2)
    with pytest.raises(ValueError, match="already registered to IWURule"):
        register_rule("iwu")(HalfHalf)
    with pytest.raises(ValueError, match="rule name must be a non-empty string without ':'"):
        register_rule("a:b")(HalfHalf)


def test_controller_state_is_json_as_is() -> None:
    ctrl = Controller.from_method("mt-grpo:0.2", num_tasks=3, batch_size=32, group_size=8)
    state = json.loads(json.dumps(ctrl.state_dict()))
    twin = Controller.from_method("mt-grpo:0.2", num_tasks=3, batch_size=32, group_size=8)
    twin.load_state_dict(state)
    assert twin.state_dict() == ctrl.state_dict()


def test_stand_ins_join_the_rollouts_and_move_j_and_accuracy() -> None:
    facts = StepFacts(rollout_task=[0, 0, 1, 1], rollout_reward=[1.0, 0.0, 1.0, 1.0])
    out = with_stand_ins(facts, [np.array([1, 1]), np.array([], dtype=np.int64)], [np.array([0.0, 0.0]), np.zeros(0)])
    signals = step_signals(out, 2)
    np.testing.assert_allclose(signals.reward, [0.5, 0.5])  # task 1: two skipped all-wrong stand-ins join 1, 1
    assert signals.accuracy is not None
    np.testing.assert_allclose(signals.accuracy, [0.5, 0.5])
    assert with_stand_ins(facts, [], []) is facts
    with pytest.raises(ValueError, match="one array per draw each, got 1 and 0"):
        with_stand_ins(facts, [np.array([1])], [])
    with pytest.raises(ValueError, match="must match in length, got 6 and 5"):
        with_stand_ins(facts, [np.array([1, 1])], [np.array([0.0])])
