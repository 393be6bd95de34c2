"""Per-task evaluation: the eval rollouts' rewards, per task, through the core's signal path.

During `trainer.evaluate()` every scored eval rollout (TRL's gathered rewards, combined with the reward weights)
is kept with its task; at the end of the pass one `StepFacts` of all of them goes through `step_signals`, so the
eval reward J_k and accuracy are defined exactly as the training ones (docs/signals.md). They join the evaluation's
own metrics under its `metric_key_prefix`: `eval_mtgrpo/reward/<task>` and `eval_mtgrpo/accuracy/<task>`, or
`eval_<name>_mtgrpo/...` for each set of a dict of eval datasets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from datasets import Dataset
from numpy.typing import NDArray

from mtgrpo_backends.trl.step_log import log_signals
from mtgrpo_core import StepFacts, step_signals
from mtgrpo_core.prompts.pool import task_ids_of


def check_eval_datasets(eval_dataset: Any, task_column: str, task_names: Sequence[str]) -> None:
    """Refuse an eval dataset (or a dict of them) without the task column or with tasks not trained."""
    named = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
    for name, dataset in named:
        what = name if name == "eval_dataset" else f"eval_dataset[{name!r}]"
        if not isinstance(dataset, Dataset):
            continue  # an iterable dataset is read as it streams: rows are checked when scored
        if task_column not in dataset.column_names:
            raise ValueError(
                f"{what} has no task column {task_column!r} (columns: {dataset.column_names}); per-task eval "
                "metrics need it: add the column (the task of each row)"
            )
        task_ids_of(dataset[task_column], task_names, f"{what} column {task_column!r}")


class EvalSignals:
    """Collects one evaluation pass's rollouts (task id, reward) and logs per-task reward and accuracy."""

    def __init__(self, task_names: Sequence[str], correct_reward: float) -> None:
        self.task_names = list(task_names)
        self.correct_reward = correct_reward
        self._tasks: list[NDArray[np.int64]] = []
        self._rewards: list[NDArray[np.float64]] = []

    def reset(self) -> None:
        self._tasks.clear()
        self._rewards.clear()

    def task_ids(self, values: Sequence[Any]) -> NDArray[np.int64]:
        return task_ids_of(values, self.task_names, "eval row task")

    def add(self, tasks: NDArray[np.int64], rewards: NDArray[np.float64]) -> None:
        """Rollouts of one eval batch (all processes); rollouts without a finite reward are left out."""
        keep = np.isfinite(rewards)
        self._tasks.append(tasks[keep])
        self._rewards.append(rewards[keep])

    def metrics(self, prefix: str) -> dict[str, float]:
        """This pass's per-task reward and accuracy as `{prefix}_mtgrpo/...` (tasks without a scored rollout are
        left out)."""
        tasks, rewards = np.concatenate([np.zeros(0, np.int64), *self._tasks]), np.concatenate([[], *self._rewards])
        self.reset()
        if tasks.size == 0:
            return {}
        facts = StepFacts(rollout_task=tasks, rollout_reward=rewards)
        signals = step_signals(facts, len(self.task_names), correct_reward=self.correct_reward)
        logged: dict[str, list[float]] = defaultdict(list)
        log_signals(logged, self.task_names, signals)
        return {f"{prefix}_{key}": values[0] for key, values in logged.items() if np.isfinite(values[0])}
