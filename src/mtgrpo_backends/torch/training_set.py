"""A finite training set per task for the reference loop, handed out by the core's prompt pool.

`TrainConfig.pool_size` distinct prompts per task (`Suite.training_set`: fixed by the suite, like a dataset; the
run's seed orders the passes). With `TrainConfig.selection` the pool keeps each prompt's last outcome and passes
over prompts last seen uninformative (docs/selective.md); the prompts passed over count in the step's J_k and
accuracy as stand-in rollouts, and the draws' counts are logged per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_backends.torch.tasks import Problem, Suite
from mtgrpo_core import PromptPool
from mtgrpo_core.prompts.history import SelectionConfig


class TrainingSet:
    """The rows (task k's prompts are rows k * size ... (k + 1) * size - 1) and the pool that hands them out; the
    pool keeps the step's stand-ins and counts (`PromptPool.take` / `end_step`)."""

    def __init__(self, suite: Suite, size: int, seed: int, selection: SelectionConfig | None) -> None:
        self.problems: list[tuple[int, Problem]] = [
            (k, p) for k in range(suite.num_tasks) for p in suite.training_set(k, size)
        ]
        row_tasks = np.repeat(np.arange(suite.num_tasks), size)
        self.pool = PromptPool(row_tasks, suite.task_names, seed, selection=selection)
        self.selection = selection

    def draw(self, counts: ArrayLike, group_size: int) -> tuple[NDArray[np.int64], list[tuple[int, Problem]]]:
        """Rows and (task, problem) pairs of a request: exactly counts[k] prompts of task k."""
        rows = self.pool.take(counts, group_size).rows
        return rows, [self.problems[r] for r in rows]

    def report(self, rows: NDArray[np.int64], rewards: NDArray[np.float64]) -> None:
        """The generated groups' rewards (G, N) of `rows` (G,), into the pool's history (with selection)."""
        if self.selection is not None and rows.size:
            self.pool.report(rows, rewards)

    def end_step(self) -> tuple[list[NDArray[np.int64]], list[NDArray[np.float64]], dict[str, Any]]:
        """The step's stand-in rollouts (for `with_stand_ins`) and its counts per task, from the pool."""
        drawn = self.pool.end_step()
        return [drawn.stand_in_task], [drawn.stand_in_reward], dict(drawn.counts)
