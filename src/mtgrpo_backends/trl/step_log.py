"""What the TRL backend logs: per-task weights, filter rates and shares of each batch conversation; rounds and
generation; tasks trained only from carried groups; prompts skipped and the stand-ins' share of J_k; a warning when
the round budget runs out; per-task signals (train and eval), absent values left out."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.sampling.sampler import BatchReport

logger = logging.getLogger(__name__)


def log_batch(
    metrics: Any, task_names: Sequence[str], report: BatchReport, shortfall: int, rollouts_per_group: int, warn: bool
) -> None:
    """Append the report's figures to TRL's metric lists (`trainer._metrics["train"]`); warn (on one process)
    when the round budget ran out or the no-signal guard sampled a task only by probes."""
    if report.barren_tasks and warn:
        logger.warning(
            "MT-GRPO: no informative group of %s in a long run of its groups: sampled only by probes until one is "
            "informative (the no-signal guard, docs/sampler.md)",
            [task_names[k] for k in report.barren_tasks],
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        filtered = np.where(report.generated > 0, 1.0 - report.informative / report.generated, np.nan)
    for k, name in enumerate(task_names):
        metrics[f"mtgrpo/weight/{name}"].append(float(report.weights[k]))
        metrics[f"mtgrpo/filtered_ratio/{name}"].append(float(filtered[k]))
        metrics[f"mtgrpo/batch_share/{name}"].append(float(report.realized_shares[k]))
        metrics[f"mtgrpo/barren/{name}"].append(float(k in report.barren_tasks))
    if report.carried_counts is not None:  # trained only from carried groups: J_k is the last measured one
        carried_only = (report.realized_counts > 0) & (report.generated == 0)
        for k, name in enumerate(task_names):
            metrics[f"mtgrpo/carried_only/{name}"].append(float(carried_only[k]))
        metrics["mtgrpo/carried_only_step"].append(float(report.generated.sum() == 0))
    metrics["mtgrpo/rounds"].append(float(report.rounds))
    metrics["mtgrpo/generated_groups"].append(float(report.generated.sum()))
    metrics["mtgrpo/generated_rollouts"].append(float(report.generated.sum() * rollouts_per_group))
    metrics["mtgrpo/shortfall_groups"].append(float(shortfall))
    if report.carried_counts is not None and report.kept_counts is not None:
        metrics["mtgrpo/carried_groups"].append(float(report.carried_counts.sum()))
        metrics["mtgrpo/kept_groups"].append(float(report.kept_counts.sum()))
    if report.budget_exhausted and warn:
        logger.warning(
            "MT-GRPO: round budget spent after %d rounds; training on %d informative groups of %d (short tasks: "
            "%s); the rest of the batch is masked out of the loss",
            report.rounds,
            int(report.realized_counts.sum()),
            int(report.realized_counts.sum()) + shortfall,
            [task_names[k] for k in report.short_tasks],
        )


def log_selection(
    metrics: Any,
    task_names: Sequence[str],
    skipped_task: NDArray[np.int64],
    rollout_task: NDArray[np.int64],
    fresh: int,
) -> None:
    """Per task: prompts the pool passed over this step, and the share of the task's rollouts in J_k that are
    stand-ins for them (the rollouts after the first `fresh` of rollout_task; docs/selective.md)."""
    k = len(task_names)
    skipped = np.bincount(skipped_task, minlength=k)
    total = np.bincount(rollout_task, minlength=k)
    stand_ins = np.bincount(rollout_task[fresh:], minlength=k)
    for j, name in enumerate(task_names):
        metrics[f"mtgrpo/skipped_prompts/{name}"].append(float(skipped[j]))
        metrics[f"mtgrpo/stand_in_share/{name}"].append(float(stand_ins[j] / total[j]) if total[j] else math.nan)


def log_signals(
    metrics: Any, task_names: Sequence[str], signals: TaskSignals, per_sample_improvement: bool = True
) -> None:
    """Append a step's per-task J_k, accuracy and (if given) I_k; a value that does not exist (a task without
    rollouts; a per-sample I_k of a task without a trained sample, which TaskSignals records as 0) is appended as
    NaN, which TRL's averaging skips and `drop_absent` leaves out of the log."""
    for k, name in enumerate(task_names):
        present = bool(signals.present[k])
        metrics[f"mtgrpo/reward/{name}"].append(float(signals.reward[k]) if present else math.nan)
        if signals.accuracy is not None:
            metrics[f"mtgrpo/accuracy/{name}"].append(float(signals.accuracy[k]) if present else math.nan)
        if signals.improvement is not None:
            measured = present and not (per_sample_improvement and k in signals.untrained)
            metrics[f"mtgrpo/improvement/{name}"].append(float(signals.improvement[k]) if measured else math.nan)


def drop_absent(metrics: dict[str, list[float]], prefix: str = "mtgrpo/") -> None:
    """Remove this logging window's MT-GRPO metrics that hold no finite value (TRL would log them as None)."""
    for key in [k for k, values in metrics.items() if k.startswith(prefix)]:
        if not any(math.isfinite(x) for x in metrics[key]):
            del metrics[key]
