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
from mtgrpo_core.prompt_history import INFORMATIVE, SelectionConfig, group_outcomes

COUNTS = ("handed_out", "retried", "retried_informative", "skipped")  # per task, per step (with selection)


class TrainingSet:
    """The rows (task k's prompts are rows k * size ... (k + 1) * size - 1) and the pool that hands them out."""

    def __init__(self, suite: Suite, size: int, seed: int, selection: SelectionConfig | None) -> None:
        self.problems: list[tuple[int, Problem]] = [
            (k, p) for k in range(suite.num_tasks) for p in suite.training_set(k, size)
        ]
        row_tasks = np.repeat(np.arange(suite.num_tasks), size)
        self.pool = PromptPool(row_tasks, suite.task_names, seed, selection=selection)
        self.selection = selection
        self._retried: set[int] = set()
        self._stand_task: list[NDArray[np.int64]] = []
        self._stand_reward: list[NDArray[np.float64]] = []
        self._counts = {name: np.zeros(suite.num_tasks, dtype=np.int64) for name in COUNTS}

    def draw(self, counts: ArrayLike, group_size: int) -> tuple[NDArray[np.int64], list[tuple[int, Problem]]]:
        """Rows and (task, problem) pairs of a request: exactly counts[k] prompts of task k."""
        if self.selection is None:
            rows, _ = self.pool.draw(counts)
            return rows, [self.problems[r] for r in rows]
        picked = self.pool.select(counts)
        task, reward = picked.stand_ins(group_size, self.selection.correct_reward)
        self._stand_task.append(task)
        self._stand_reward.append(reward)
        k = self._counts["handed_out"].size
        self._counts["handed_out"] += np.bincount(picked.tasks, minlength=k)
        self._counts["retried"] += np.bincount(picked.tasks[picked.retried], minlength=k)
        self._counts["skipped"] += np.bincount(picked.skipped_tasks, minlength=k)
        self._retried.update(int(r) for r in picked.rows[picked.retried])
        return picked.rows, [self.problems[r] for r in picked.rows]

    def report(self, rows: NDArray[np.int64], rewards: NDArray[np.float64]) -> None:
        """The generated groups' rewards (G, N) of `rows` (G,), into the pool's history (with selection)."""
        if self.selection is None or rows.size == 0:
            return
        self.pool.report(rows, rewards)
        outcome = group_outcomes(rewards, self.selection.filtering, self.selection.correct_reward)
        retried = np.isin(rows, list(self._retried)) & (outcome == INFORMATIVE)
        tasks = np.array([self.problems[r][0] for r in rows[retried]], dtype=np.int64)
        self._counts["retried_informative"] += np.bincount(tasks, minlength=self._counts["skipped"].size)
        self._retried.difference_update(int(r) for r in rows)

    def end_step(self) -> tuple[list[NDArray[np.int64]], list[NDArray[np.float64]], dict[str, Any]]:
        """The step's stand-in rollouts (one (task, reward) pair per draw) and its counts per task; resets both."""
        out = (self._stand_task, self._stand_reward, {name: c.tolist() for name, c in self._counts.items()})
        self._stand_task, self._stand_reward = [], []
        for c in self._counts.values():
            c[:] = 0
        return out
