"""Where the TRL backend's prompts come from: the core's prompt pool over the train dataset's rows, with per-prompt
history and skipping when `MTGRPOConfig.selection` is set (docs/selective.md). The trainer takes each request's rows
with `PromptPool.take` and the step's stand-ins with `PromptPool.end_step`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtgrpo_backends.trl.config import MTGRPOConfig
from mtgrpo_core import PromptPool
from mtgrpo_core.prompts.pool import task_ids_of


def build_pool(cfg: MTGRPOConfig, values: Sequence[Any], task_names: Sequence[str], filtering: str) -> PromptPool:
    """The pool over the dataset's rows (task of each row from the task column); selection needs a filtering
    method, whose filter decides whether a reported group was informative."""
    row_tasks = task_ids_of(values, task_names, f"train_dataset column {cfg.task_column!r}")
    return PromptPool(row_tasks, task_names, cfg.seed, selection=cfg.settings.selection_config(filtering))
