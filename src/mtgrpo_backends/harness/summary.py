"""Per-method summaries over seeds: accuracy at equal training steps and at an equal generation budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_backends.harness.record import RunRecord
from mtgrpo_core import metrics

THRESHOLDS = (0.3, 0.4, 0.5)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def spread_rows(rows: Sequence[NDArray[np.float64]]) -> dict[str, list[float]]:
    arr = np.asarray(rows, dtype=np.float64)
    std = arr.std(axis=0, ddof=1) if arr.shape[0] > 1 else np.zeros(arr.shape[1])
    return {"mean": arr.mean(axis=0).tolist(), "std": std.tolist()}


def by_method(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.method, []).append(r)
    return groups


def equal_budget(records: Sequence[RunRecord]) -> dict[str, Any]:
    """The comparison's equal generation budget: the smallest total of generated rollouts of any run."""
    low = min(records, key=lambda r: int(r.rollouts.sum()))
    return {"rollouts": int(low.rollouts.sum()), "method": low.method, "seed": low.seed}


def equal_clock(records: Sequence[RunRecord]) -> dict[str, Any] | None:
    """The comparison's equal wall-clock: the shortest run's simulated seconds (None unless every run has a clock)."""
    if any(r.seconds is None for r in records):
        return None
    low = min(records, key=lambda r: float(r.seconds[-1]) if r.seconds is not None else 0.0)
    return {"seconds": float(low.seconds[-1]) if low.seconds is not None else 0.0, "method": low.method}


def _share_distance(r: RunRecord) -> float:
    """Mean over all steps of TV(realized shares, z); a step with an empty batch counts 0."""
    tv = [metrics.share_distance(s, z) for s, z, n in zip(r.shares, r.weights, r.trained, strict=True) if n]
    return float(np.sum(tv)) / max(r.steps, 1)


def _delta_m(runs: Sequence[RunRecord], ref: dict[int, NDArray[np.float64]], at: Sequence[int]) -> Any:
    """Delta_m% vs the reference run of the same seed; None without one, or where a reference accuracy is 0."""
    pairs = [(r.accuracy[i], ref[r.seed]) for r, i in zip(runs, at, strict=True) if r.seed in ref]
    if not pairs or any((b == 0).any() for _, b in pairs):
        return None
    return spread([metrics.delta_m_percent(a, b) for a, b in pairs])


def summarize(
    records: Sequence[RunRecord], reference: str | None = "dapo", thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, Any]:
    """Per method, mean±std over its seeds: final worst-task and average accuracy (equal training steps) and the
    same at the equal generation budget (each run's last evaluation within it, and the step it was taken at),
    Delta_m% vs the reference method paired by seed, steps to each worst-task threshold, mean rounds, generated
    groups per step, TV(realized share, z), max weight, mean weights and shares, and the backend's metrics; with a
    clock on every run, the same at the equal wall-clock (the shortest run's seconds)."""
    groups = by_method(records)
    budget, clock = equal_budget(records), equal_clock(records)
    ref_runs = groups.get(reference or "", [])
    ref_final = {r.seed: r.final_accuracy for r in ref_runs}
    ref_budget = {r.seed: r.accuracy[r.within_budget(budget["rollouts"])] for r in ref_runs}
    out: dict[str, dict[str, Any]] = {}
    for method, runs in groups.items():
        finals = [r.final_accuracy for r in runs]
        at_budget = [r.within_budget(budget["rollouts"]) for r in runs]
        accs = [r.accuracy[i] for r, i in zip(runs, at_budget, strict=True)]
        row: dict[str, Any] = {
            "seeds": [r.seed for r in runs],
            "steps": runs[0].steps,
            "start": {
                "worst": spread([metrics.worst_task_accuracy(r.accuracy[0]) for r in runs]),
                "average": spread([metrics.average_accuracy(r.accuracy[0]) for r in runs]),
            },
            "worst": spread([metrics.worst_task_accuracy(a) for a in finals]),
            "average": spread([metrics.average_accuracy(a) for a in finals]),
            "final_per_task": spread_rows(finals),
            "delta_m": _delta_m(runs, ref_final, [-1] * len(runs)),
            "budget": {
                "worst": spread([metrics.worst_task_accuracy(a) for a in accs]),
                "average": spread([metrics.average_accuracy(a) for a in accs]),
                "step": spread([float(r.eval_steps[i]) for r, i in zip(runs, at_budget, strict=True)]),
                "delta_m": _delta_m(runs, ref_budget, at_budget),
            },
            "steps_to": {},
            "rounds": spread([float(r.rounds.mean()) for r in runs]),
            "generated_per_step": spread([float(r.generated.mean()) for r in runs]),
            "rollouts": spread([float(r.rollouts.sum()) for r in runs]),
            "share_distance": spread([_share_distance(r) for r in runs]),
            "max_weight": spread([float(r.weights.max(axis=1).mean()) for r in runs]),
            "mean_weights": spread_rows([r.weights.mean(axis=0) for r in runs]),
            "mean_shares": spread_rows([r.shares.mean(axis=0) for r in runs]),
            "budget_exhausted_steps": spread([float(r.budget_exhausted.sum()) for r in runs]),
            "wall_s": spread([r.wall_s for r in runs]),
            "metrics": {k: spread([r.metrics[k] for r in runs]) for k in runs[0].metrics},
        }
        if clock is not None:
            at_clock = [r.within_seconds(clock["seconds"]) for r in runs]
            row["clock"] = {
                "worst": spread(
                    [metrics.worst_task_accuracy(r.accuracy[i]) for r, i in zip(runs, at_clock, strict=True)]
                ),
                "average": spread(
                    [metrics.average_accuracy(r.accuracy[i]) for r, i in zip(runs, at_clock, strict=True)]
                ),
                "step": spread([float(r.eval_steps[i]) for r, i in zip(runs, at_clock, strict=True)]),
            }
        for thr in thresholds:
            hit = [metrics.steps_to_threshold(r.accuracy, thr, r.eval_steps) for r in runs]
            reached = [h for h in hit if h is not None]
            row["steps_to"][str(thr)] = {
                "reached": len(reached),
                "of": len(runs),
                **(spread(reached) if reached else {"mean": None, "std": None}),
            }
        out[method] = row
    return {"reference": reference if ref_runs else None, "budget": budget, "clock": clock, "methods": out}
