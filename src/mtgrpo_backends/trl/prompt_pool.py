"""Per-task prompt pools: which dataset rows to generate for a request of per-task counts.

Each task's rows are visited in passes; pass e of task k is a permutation seeded by (seed, k, e), so every process
draws the same rows without communication, and the state is one cursor per task (saved with checkpoints).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import _validate as v


def task_ids_of_column(values: Sequence[Any], tasks: Sequence[str], column: str) -> NDArray[np.int64]:
    """Map a dataset's task column to task ids (position in `tasks`), refusing unknown values."""
    index = {name: k for k, name in enumerate(tasks)}
    ids = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        if value not in index:
            raise ValueError(
                f"train_dataset column {column!r} holds {value!r} at row {row}, which is not in tasks {list(tasks)}"
            )
        ids[row] = index[value]
    return ids


class TaskPromptPool:
    """Draws dataset row indices per task without replacement within a pass over the task's rows."""

    def __init__(self, row_tasks: ArrayLike, num_tasks: int, seed: int, task_names: Sequence[str]) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self.seed = v.positive_int("seed", seed, minimum=0)
        ids = v.task_ids("row_tasks", row_tasks, self._k)
        self._rows = [np.flatnonzero(ids == k) for k in range(self._k)]
        empty = [task_names[k] for k in range(self._k) if self._rows[k].size == 0]
        if empty:
            raise ValueError(f"train_dataset has no rows for tasks {empty}; every configured task needs prompts")
        self._cursor = np.zeros(self._k, dtype=np.int64)

    @property
    def num_tasks(self) -> int:
        return self._k

    def _order(self, task: int, epoch: int) -> NDArray[np.int64]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, task, epoch]))
        return self._rows[task][rng.permutation(self._rows[task].size)]

    def draw(self, counts: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Row indices for counts[k] prompts of each task k -> (rows, task ids), task by task."""
        c = v.int_array("counts", counts, ndim=1)
        if c.shape[0] != self._k or (c < 0).any():
            raise ValueError(f"counts must be {self._k} non-negative ints, got {c.tolist()}")
        rows, tasks = [], []
        for k in range(self._k):
            size = self._rows[k].size
            start, stop = int(self._cursor[k]), int(self._cursor[k] + c[k])
            epochs = range(start // size, (stop - 1) // size + 1) if stop > start else range(0)
            order = np.concatenate([self._order(k, e) for e in epochs]) if epochs else np.zeros(0, np.int64)
            offset = epochs[0] * size if epochs else 0
            rows.append(order[start - offset : stop - offset])
            tasks.append(np.full(int(c[k]), k, dtype=np.int64))
            self._cursor[k] = stop
        return np.concatenate(rows), np.concatenate(tasks)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "task_prompt_pool", "num_tasks": self._k, "seed": self.seed, "cursor": self._cursor.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, "task_prompt_pool", self._k)
        cursor = v.int_array("state['cursor']", state["cursor"], ndim=1)
        if cursor.shape[0] != self._k or (cursor < 0).any():
            raise ValueError(f"state['cursor'] must be {self._k} non-negative ints, got {cursor.tolist()}")
        self.seed = int(state["seed"])
        self._cursor = cursor.copy()
