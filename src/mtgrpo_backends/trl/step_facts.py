"""The TRL backend's facts of one step, in the form the core's signal path (`mtgrpo_core.step_signals`) reads."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import StepFacts


def step_facts(
    group_task: NDArray[np.int64],
    rewards: NDArray[np.float64],
    row_tasks: NDArray[np.int64],
    row_ids: NDArray[np.int64],
    row_advantages: NDArray[np.float64],
    trained_groups: NDArray[np.int64],
) -> StepFacts:
    """Facts from GRPOTrainer's gathered data.

    group_task (G,) and rewards (G, N): every generated group of the step. row_tasks, row_ids (R,): the training
    batch's rows (task, group key * N + j; groups carried from an earlier step included), with their advantages
    row_advantages (R,); rows of groups not in trained_groups (inert top-up rows, masked out of the loss) are not
    trained samples.
    """
    n = rewards.shape[1]
    groups = row_ids // n
    trained = np.isin(groups, trained_groups)
    return StepFacts(
        rollout_task=np.repeat(group_task, n),
        rollout_reward=rewards.ravel(),
        sample_task=row_tasks[trained],
        sample_advantage=row_advantages[trained],
    )


def with_surrogate(facts: StepFacts, steps: list[NDArray[np.float64]]) -> StepFacts:
    """Add the surrogate measured around each optimizer step: steps[m] (S_m, 4) rows of [before, after, task,
    valid] of optimizer step m (its mini-batch); rows with valid 0 (completions without tokens) are left out."""
    rows = np.concatenate(steps) if steps else np.zeros((0, 4))
    minibatch = np.repeat(np.arange(len(steps), dtype=np.int64), [len(r) for r in steps])
    valid = rows[:, 3] > 0
    rows = rows[valid]
    return replace(
        facts,
        surrogate_before=rows[:, 0],
        surrogate_after=rows[:, 1],
        surrogate_task=rows[:, 2].astype(np.int64),
        surrogate_minibatch=minibatch[valid].astype(np.int64),
    )
