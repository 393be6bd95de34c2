"""Where the TRL backend's prompts come from: the core's prompt pool over the train dataset's rows, with per-prompt
history and skipping when `MTGRPOConfig.selection` is set (docs/selective.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from mtgrpo_backends.trl.config import MTGRPOConfig
from mtgrpo_backends.trl.step_data import StepData
from mtgrpo_core import PromptPool, SelectionConfig
from mtgrpo_core.prompt_pool import task_ids_of


def build_pool(cfg: MTGRPOConfig, values: Sequence[Any], task_names: Sequence[str], filtering: str) -> PromptPool:
    """The pool over the dataset's rows (task of each row from the task column); selection needs a filtering
    method, whose filter decides whether a reported group was informative."""
    row_tasks = task_ids_of(values, task_names, f"train_dataset column {cfg.task_column!r}")
    selection = None
    if cfg.selection is not None:
        if filtering == "none":
            raise ValueError(f"selection needs a method that filters groups; {cfg.method!r} does not")
        settings = cast(dict[str, Any], cfg.selection)
        selection = SelectionConfig(filtering=cast(Any, filtering), correct_reward=cfg.correct_reward, **settings)
    return PromptPool(row_tasks, task_names, cfg.seed, selection=selection)


def draw(
    pool: PromptPool, data: StepData, counts: NDArray[np.int64], group_size: int, correct_reward: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Rows and tasks of a request; with selection, the rollouts standing in for the prompts passed over are kept in
    `data` for this step's J_k and accuracy."""
    if pool.selection is None:
        return pool.draw(counts)
    picked = pool.select(counts)
    task, reward = picked.stand_ins(group_size, correct_reward)
    data.stand_in_task.append(task)
    data.stand_in_reward.append(reward)
    data.skipped_task.append(picked.skipped_tasks)
    return picked.rows, picked.tasks
