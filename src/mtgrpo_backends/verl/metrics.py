"""What the verl backend logs each step, as verl's flat metric dict: per task the weight, filtered rate, batch share,
reward, accuracy and I_k; per step the rounds, generated and failed groups and the shortfall; in streaming mode the age
of the trained groups per task and the groups requested ahead. A value that does not exist this step (a task
without rollouts) is left out rather than logged as NaN."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.sampling.sampler import Batch, BatchReport


def batch_metrics(task_names: Sequence[str], report: BatchReport, shortfall: int, failed: int) -> dict[str, float]:
    """The batch conversation's figures: `mtgrpo/<name>/<task>` and step totals, with TRL's names (with carry-over:
    groups carried into the batch and kept for a later step, and the tasks trained only from carried groups)."""
    out: dict[str, float] = {}
    for k, name in enumerate(task_names):
        out[f"mtgrpo/weight/{name}"] = float(report.weights[k])
        out[f"mtgrpo/batch_share/{name}"] = float(report.realized_shares[k])
        out[f"mtgrpo/barren/{name}"] = float(k in report.barren_tasks)
        if report.generated[k] > 0:
            out[f"mtgrpo/filtered_ratio/{name}"] = 1.0 - float(report.informative[k] / report.generated[k])
    out["mtgrpo/rounds"] = float(report.rounds)
    out["mtgrpo/generated_groups"] = float(report.generated.sum())
    out["mtgrpo/failed_groups"] = float(failed)
    out["mtgrpo/shortfall_groups"] = float(shortfall)
    if report.carried_counts is not None and report.kept_counts is not None:
        carried_only = (report.realized_counts > 0) & (report.generated == 0)  # J_k: the last measured one
        out.update({f"mtgrpo/carried_only/{name}": float(carried_only[k]) for k, name in enumerate(task_names)})
        out["mtgrpo/carried_only_step"] = float(report.generated.sum() == 0)
        out["mtgrpo/carried_groups"] = float(report.carried_counts.sum())
        out["mtgrpo/kept_groups"] = float(report.kept_counts.sum())
    out["mtgrpo/budget_exhausted"] = float(report.budget_exhausted)
    return out


def streaming_metrics(task_names: Sequence[str], batch: Batch, requested: int, in_flight: int) -> dict[str, float]:
    """The streaming mode's figures: the mean age in steps of each task's trained groups (`mtgrpo/staleness/<task>`,
    the core's staleness: step - version of the request), the groups requested ahead this step and those in flight
    after it."""
    out: dict[str, float] = {"mtgrpo/ahead_groups": float(requested), "mtgrpo/in_flight_groups": float(in_flight)}
    assert batch.staleness is not None
    for k, name in enumerate(task_names):
        mine = batch.staleness[batch.tasks == k]
        if mine.size:
            out[f"mtgrpo/staleness/{name}"] = float(np.mean(mine))
    return out


def signal_metrics(task_names: Sequence[str], signals: TaskSignals) -> dict[str, float]:
    """J_k, accuracy and I_k of present tasks (I_k also left out for a task without a trained sample)."""
    out: dict[str, float] = {}
    for k, name in enumerate(task_names):
        if not signals.present[k]:
            continue
        out[f"mtgrpo/reward/{name}"] = float(signals.reward[k])
        if signals.accuracy is not None:
            out[f"mtgrpo/accuracy/{name}"] = float(signals.accuracy[k])
        if signals.improvement is not None and k not in signals.untrained:
            out[f"mtgrpo/improvement/{name}"] = float(signals.improvement[k])
    return {key: value for key, value in out.items() if math.isfinite(value)}
