"""What the TRL backend logs of each batch conversation: per-task weights, filter rates and shares; rounds and
generation; a warning when the round budget runs out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtgrpo_core.sampler import BatchReport

logger = logging.getLogger(__name__)


def log_batch(metrics: Any, task_names: Sequence[str], report: BatchReport, shortfall: int, warn: bool) -> None:
    """Append the report's figures to TRL's metric lists (`trainer._metrics["train"]`); warn (on one process)
    when the round budget ran out."""
    with np.errstate(invalid="ignore", divide="ignore"):
        filtered = np.where(report.generated > 0, 1.0 - report.informative / report.generated, np.nan)
    for k, name in enumerate(task_names):
        metrics[f"mtgrpo/weight/{name}"].append(float(report.weights[k]))
        metrics[f"mtgrpo/filtered_ratio/{name}"].append(float(filtered[k]))
        metrics[f"mtgrpo/batch_share/{name}"].append(float(report.realized_shares[k]))
    metrics["mtgrpo/rounds"].append(float(report.rounds))
    metrics["mtgrpo/generated_groups"].append(float(report.generated.sum()))
    metrics["mtgrpo/shortfall_groups"].append(float(shortfall))
    if report.budget_exhausted and warn:
        logger.warning(
            "MT-GRPO: round budget spent after %d rounds; training on %d informative groups of %d (short tasks: "
            "%s); the rest of the batch is masked out of the loss",
            report.rounds,
            int(report.realized_counts.sum()),
            int(report.realized_counts.sum()) + shortfall,
            [task_names[k] for k in report.short_tasks],
        )
