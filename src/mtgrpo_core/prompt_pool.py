"""The prompt pool: which rows of a finite multi-task dataset a request of per-task counts generates.

Each task's rows are visited in passes; pass e of task k is a permutation seeded by (seed, k, e), so every process
draws the same rows without communication, and the state is one cursor per task. Every backend with a finite
dataset draws through this one pool (a later issue gives it per-prompt history).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v


def task_ids_of(values: Sequence[Any], tasks: Sequence[str], what: str = "task column") -> NDArray[np.int64]:
    """Map each row's task name to its id (position in `tasks`), refusing names not in `tasks`."""
    index = {name: k for k, name in enumerate(tasks)}
    ids = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        if value not in index:
            raise ValueError(f"{what} holds {value!r} at row {row}, which is not in tasks {list(tasks)}")
        ids[row] = index[value]
    return ids


class PromptPool:
    """Draws dataset row indices per task without replacement within a pass over the task's rows.

    row_tasks: (rows,) task id of each dataset row; task_names: the K task names (ids are positions).
    """

    KIND = "prompt_pool"

    def __init__(self, row_tasks: ArrayLike, task_names: Sequence[str], seed: int = 0) -> None:
        self.task_names = list(task_names)
        self._k = v.positive_int("number of task_names", len(self.task_names))
        self.seed = v.positive_int("seed", seed, minimum=0)
        ids = v.task_ids("row_tasks", row_tasks, self._k)
        self._rows = [np.flatnonzero(ids == k) for k in range(self._k)]
        empty = [self.task_names[k] for k in range(self._k) if self._rows[k].size == 0]
        if empty:
            raise ValueError(f"the dataset has no rows for tasks {empty}; every configured task needs prompts")
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
            raise ValueError(f"counts must be {self._k} non-negative ints (one per task), got {c.tolist()}")
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
        """JSON-native state: the seed, the task names and one cursor per task."""
        return {
            "kind": self.KIND,
            "num_tasks": self._k,
            "task_names": list(self.task_names),
            "seed": self.seed,
            "cursor": self._cursor.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state of a pool with the same task names; anything else is refused, nothing half-applied."""
        v.state_matches(state, self.KIND, self._k)
        if list(state.get("task_names", [])) != self.task_names:
            raise ValueError(
                f"state['task_names'] is {state.get('task_names')!r}, expected {self.task_names}: a pool of other tasks"
            )
        seed = v.positive_int("state['seed']", state.get("seed"), minimum=0)
        cursor = v.int_array("state['cursor']", state["cursor"], ndim=1)
        if cursor.shape[0] != self._k or (cursor < 0).any():
            raise ValueError(f"state['cursor'] must be {self._k} non-negative ints, got {cursor.tolist()}")
        self.seed, self._cursor = seed, cursor.copy()
