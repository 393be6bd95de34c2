"""The verl backend's facts of one step, in the form the core's signal path (`mtgrpo_core.step_signals`) reads."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import StepFacts


def step_facts(
    group_task: NDArray[np.int64],
    rewards: NDArray[np.float64],
    fresh: NDArray[np.bool_],
    row_group: NDArray[np.int64],
    row_advantage: NDArray[np.float64],
    row_valid: NDArray[np.bool_],
    surrogate: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> StepFacts:
    """Facts from one conversation's groups and the trained batch's rows (trajectories).

    group_task (G,), rewards (G, N), fresh (G,): the step's groups; fresh marks those generated and finished this
    step, whose rollouts make J_k (a failed group has no complete rewards; a group carried from an earlier step is
    trained but its rollouts are not this step's). row_group (R,): each batch row's group, -1 for
    verl's padding rows; row_advantage (R,) its advantage; row_valid (R,) whether it has response tokens.
    surrogate: (before, after), each (R,), the per-row clipped surrogate around the update (I_k, Eq. 8), measured
    once around the whole update: one mini-batch row for the per-mini-batch presets (docs/verl.md).
    Padding rows and rows without response tokens are not trained samples.
    """
    n = rewards.shape[1]
    trained = (row_group >= 0) & row_valid
    task = group_task[row_group[trained]]
    before, after = (None, None) if surrogate is None else (surrogate[0][trained], surrogate[1][trained])
    return StepFacts(
        rollout_task=np.repeat(group_task[fresh], n),
        rollout_reward=rewards[fresh].ravel(),
        sample_task=task,
        sample_advantage=row_advantage[trained],
        surrogate_before=before,
        surrogate_after=after,
        surrogate_minibatch=None if before is None else np.zeros(before.shape[0], dtype=np.int64),
    )


def row_groups(keys: Sequence[str], uid_index: dict[str, int]) -> NDArray[np.int64]:
    """Each trajectory key's group ({uid}_{session}_{index} -> position of uid), -1 for keys of other uids."""
    return np.array([uid_index.get(key.rsplit("_", 2)[0], -1) for key in keys], dtype=np.int64)
