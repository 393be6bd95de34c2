"""The one signal path: a step's facts -> TaskSignals (J_k, accuracy, I_k, SEC's r_k). Every backend calls it.

A backend reports what it observed, per rollout and per trained sample, in a `StepFacts`; `step_signals` turns it
into the per-task signals the weighting rule reads. No backend derives a signal itself, so a lambda (or a
conclusion) measured on one backend carries to another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

from mtgrpo_core import checks as v
from mtgrpo_core.protocols import SIGNAL_NEEDS, TaskSignals
from mtgrpo_core.reference_scoring import minibatch_improvement
from mtgrpo_core.signals import (
    DEFAULT_IMPROVEMENT_REDUCE,
    mean_abs_advantage_per_task,
    task_accuracy,
    task_improvement,
    task_rewards,
)


@dataclass(frozen=True)
class StepFacts:
    """What a trainer observed in one step. n generated rollouts, m trained samples (rollouts of batch groups).

    rollout_task, rollout_reward: (n,) task id and reward of EVERY rollout generated this step, before any
        zero-gradient filtering (J_k and accuracy come from these). Left None (both), `Controller.end_step` takes
        them from the step's batch conversation (every group reported with rewards).
    sample_task, sample_advantage: (m,) task id and advantage of each trained sample (SEC's r_k = mean |A|).
    surrogate_task, surrogate_before, surrogate_after: (s,) the per-sample clipped surrogate objective evaluated
        with the policy before and after the update (I_k, Eq. 8). surrogate_task defaults to sample_task; a trainer
        that measures a sample more than once (several epochs) lists it once per measurement.
    surrogate_minibatch: (s,) index (0, 1, ...) of the optimizer step (PPO mini-batch) each surrogate value was
        measured around, when the trainer measures before and after each mini-batch's step; it gives
        TaskSignals.improvement_steps (the reference presets update the weights once per mini-batch).
    Arrays left None are not measured; the signals they feed come back as None.
    """

    rollout_task: ArrayLike | None = None
    rollout_reward: ArrayLike | None = None
    sample_task: ArrayLike | None = None
    sample_advantage: ArrayLike | None = None
    surrogate_before: ArrayLike | None = None
    surrogate_after: ArrayLike | None = None
    surrogate_task: ArrayLike | None = None
    surrogate_minibatch: ArrayLike | None = None


def step_signals(
    facts: StepFacts,
    num_tasks: int,
    *,
    improvement_reduce: str = DEFAULT_IMPROVEMENT_REDUCE,
    correct_reward: float = 1.0,
) -> TaskSignals:
    """TaskSignals of one step from its facts.

    reward J_k and accuracy: over all of task k's rollouts (NaN, i.e. absent, where it had none).
    improvement I_k: `task_improvement(before, after, reduce=improvement_reduce)` over task k's surrogate samples.
    mean_abs_advantage r_k: mean |A| over task k's trained samples.
    A task with rollouts but no trained sample has no I_k or r_k: TaskSignals records 0 and lists it as untrained.
    A task with trained samples but no rollout this step (all of them carried over from an earlier step) is
    absent: J_k is a measurement of the current policy, so its signals wait for a step that generates for it.
    """
    if not isinstance(facts, StepFacts):
        raise TypeError(f"facts must be a StepFacts, got {type(facts).__name__}")
    k = v.positive_int("num_tasks", num_tasks)
    if facts.rollout_task is None or facts.rollout_reward is None:
        raise ValueError(
            "facts.rollout_task and facts.rollout_reward are needed (every rollout generated this step); "
            "Controller.end_step fills them in from the batch conversation when both are None"
        )
    reward, _ = task_rewards(facts.rollout_reward, facts.rollout_task, k)
    accuracy = task_accuracy(facts.rollout_reward, facts.rollout_task, k, correct_reward)
    mean_abs = None
    if facts.sample_advantage is not None:
        if facts.sample_task is None:
            raise ValueError("facts.sample_task is None but facts.sample_advantage is given: pass both")
        mean_abs = mean_abs_advantage_per_task(facts.sample_advantage, facts.sample_task, k)
    improvement = steps = None
    measured = (facts.surrogate_before is not None, facts.surrogate_after is not None)
    if any(measured):
        if not all(measured):
            raise ValueError("facts.surrogate_before and facts.surrogate_after must be given together")
        task = facts.sample_task if facts.surrogate_task is None else facts.surrogate_task
        if task is None:
            raise ValueError("facts.surrogate_task (or facts.sample_task) is needed with the surrogate values")
        assert facts.surrogate_before is not None and facts.surrogate_after is not None
        improvement = task_improvement(facts.surrogate_before, facts.surrogate_after, task, k, improvement_reduce)
        if facts.surrogate_minibatch is not None and np.size(facts.surrogate_minibatch) == 0:
            steps = np.zeros((1, k))  # nothing trained: one update with I_k = 0, as `update` would take
        elif facts.surrogate_minibatch is not None:
            steps = minibatch_improvement(
                facts.surrogate_before, facts.surrogate_after, task, facts.surrogate_minibatch, k, improvement_reduce
            )
    elif facts.surrogate_minibatch is not None:
        raise ValueError("facts.surrogate_minibatch is given without facts.surrogate_before and surrogate_after")
    return TaskSignals.build(
        reward=reward,
        present=~np.isnan(reward),
        improvement=improvement,
        mean_abs_advantage=mean_abs,
        accuracy=accuracy,
        improvement_steps=steps,
    )


def with_stand_ins(facts: StepFacts, tasks: Sequence[ArrayLike], rewards: Sequence[ArrayLike]) -> StepFacts:
    """The facts with the rollouts standing in for prompts a pool's selection passed over (`Selection.stand_ins`,
    one (task, reward) pair of arrays per draw) added to the step's rollouts, so that J_k and accuracy measure the
    task, not the prompts the skip rule let through (docs/selective.md)."""
    if len(tasks) != len(rewards):
        raise ValueError(f"tasks and rewards must hold one array per draw each, got {len(tasks)} and {len(rewards)}")
    if not tasks:
        return facts
    if facts.rollout_task is None or facts.rollout_reward is None:
        raise ValueError("facts.rollout_task and rollout_reward are None: stand-ins join the step's own rollouts")
    task = np.concatenate([np.asarray(facts.rollout_task, dtype=np.int64), *(np.asarray(t) for t in tasks)])
    reward = np.concatenate([np.asarray(facts.rollout_reward, dtype=np.float64), *(np.asarray(r) for r in rewards)])
    if task.shape != reward.shape:
        raise ValueError(f"stand-in tasks and rewards must match in length, got {task.size} and {reward.size}")
    return replace(facts, rollout_task=task, rollout_reward=reward)


def check_needs(needs: Iterable[str], provided: Iterable[str], rule: str, backend: str) -> None:
    """Refuse a rule that needs a signal the backend does not measure, naming both."""
    wanted = set(needs)
    unknown = wanted - set(SIGNAL_NEEDS)
    if unknown:
        raise ValueError(f"rule {rule} declares needs {sorted(unknown)}; known signals are {list(SIGNAL_NEEDS)}")
    missing = wanted - set(provided)
    if missing:
        raise ValueError(
            f"rule {rule} needs {sorted(missing)}, which backend {backend} does not measure (it provides "
            f"{sorted(provided)})"
        )
