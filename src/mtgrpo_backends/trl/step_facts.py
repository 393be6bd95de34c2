"""The TRL backend's facts of one step, in the form the core's signal path (`mtgrpo_core.step_signals`) reads."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import StepFacts


def step_facts(
    group_task: NDArray[np.int64],
    rewards: NDArray[np.float64],
    row_ids: NDArray[np.int64],
    row_advantages: NDArray[np.float64],
    trained_groups: NDArray[np.int64],
) -> StepFacts:
    """Facts from GRPOTrainer's gathered data.

    group_task (G,) and rewards (G, N): every generated group of the step. row_ids (R,): the training batch's rows
    as group * N + j, with their advantages row_advantages (R,); rows of groups not in trained_groups (inert
    top-up rows, masked out of the loss) are not trained samples.
    """
    n = rewards.shape[1]
    groups = row_ids // n
    trained = np.isin(groups, trained_groups)
    return StepFacts(
        rollout_task=np.repeat(group_task, n),
        rollout_reward=rewards.ravel(),
        sample_task=group_task[groups[trained]],
        sample_advantage=row_advantages[trained],
    )


def with_surrogate(facts: StepFacts, rows: NDArray[np.float64]) -> StepFacts:
    """Add the surrogate measured after each optimizer step: rows (S, 4) of [before, after, task, valid]; rows
    with valid 0 (completions without tokens) are left out."""
    rows = rows[rows[:, 3] > 0]
    return replace(
        facts, surrogate_before=rows[:, 0], surrogate_after=rows[:, 1], surrogate_task=rows[:, 2].astype(np.int64)
    )
