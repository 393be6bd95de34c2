"""The comparison's table and its results.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_backends.harness.pool import Outcome
from mtgrpo_core import metrics


def _pm(stat: dict[str, Any] | None, scale: float = 1.0, digits: int = 1) -> str:
    if stat is None or stat["mean"] is None:
        return "-"
    return f"{stat['mean'] * scale:.{digits}f}±{stat['std'] * scale:.{digits}f}"


def _columns(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*["-" * w for w in widths]), *[fmt.format(*r) for r in rows]])


def format_table(summary: dict[str, Any], task_names: Sequence[str]) -> str:
    """Accuracy (in %, mean±std over seeds) at equal steps and at the equal generation budget, the sampler's cost,
    and per task the final accuracy and mean weight -> realized share."""
    rows, reference, budget = summary["methods"], summary["reference"], summary["budget"]
    first = next(iter(rows.values()))
    thresholds = list(first["steps_to"])
    head = ["method", "worst %", "avg %", f"Δm% vs {reference or '-'}", "worst %@budget", "avg %@budget"]
    head += ["step@budget", *[f"steps@{float(t) * 100:g}%" for t in thresholds]]
    lines = []
    for method, row in rows.items():
        steps = []
        for thr in thresholds:
            s = row["steps_to"][thr]
            steps.append(f"{_pm(s, digits=0)} ({s['reached']}/{s['of']})" if s["reached"] else f"- (0/{s['of']})")
        b = row["budget"]
        at_steps = [_pm(row["worst"], 100), _pm(row["average"], 100), _pm(row["delta_m"])]
        at_budget = [_pm(b["worst"], 100), _pm(b["average"], 100), _pm(b["step"], digits=0)]
        lines.append([method, *at_steps, *at_budget, *steps])
    start = first["start"]
    text = (
        f"start (step 0): worst {_pm(start['worst'], 100)} %, avg {_pm(start['average'], 100)} %\n"
        f"equal budget: {budget['rollouts']:,} generated rollouts (the fewest of any run: {budget['method']}, "
        f"seed {budget['seed']}); @budget = each run's last evaluation within it\n" + _columns(head, lines)
    )
    clock = summary.get("clock")
    if clock is not None:
        head = ["method", "worst %@clock", "avg %@clock", "step@clock"]
        timed = [
            [m, _pm(r["clock"]["worst"], 100), _pm(r["clock"]["average"], 100), _pm(r["clock"]["step"], digits=0)]
            for m, r in rows.items()
        ]
        text += (
            f"\n\nequal wall-clock: {clock['seconds'] / 3600:,.2f} simulated hours (the shortest run: "
            f"{clock['method']}); @clock = each run's last evaluation within it\n" + _columns(head, timed)
        )
    names = list(first["metrics"])
    cost_head = ["method", "rounds", "groups/step", "TV(share,z)", "max z", "budget-exhausted steps", *names]
    cost = [
        [m, _pm(r["rounds"], digits=2), _pm(r["generated_per_step"], digits=1), _pm(r["share_distance"], digits=3)]
        + [_pm(r["max_weight"], digits=3), _pm(r["budget_exhausted_steps"], digits=1)]
        + [_pm(r["metrics"][n], digits=3) for n in names]
        for m, r in rows.items()
    ]
    text += "\n\n" + _columns(cost_head, cost)
    if len(task_names) <= 12:
        text += "\n\n" + _per_task_table(rows, task_names)
    return text


def _per_task_table(rows: dict[str, Any], task_names: Sequence[str]) -> str:
    """Final accuracy % and mean weight -> mean realized share per task: methods as rows for up to 4 tasks,
    as columns beyond."""
    cells = {
        m: [
            f"{a * 100:.1f} / {x:.2f}→{y:.2f}"
            for a, x, y in zip(
                row["final_per_task"]["mean"], row["mean_weights"]["mean"], row["mean_shares"]["mean"], strict=True
            )
        ]
        for m, row in rows.items()
    }
    if len(task_names) <= 4:
        head = ["method", *[f"{n}: acc% / z→share" for n in task_names]]
        return _columns(head, [[m, *c] for m, c in cells.items()])
    head = ["task: acc% / z→share", *cells]
    return _columns(head, [[n, *[c[j] for c in cells.values()]] for j, n in enumerate(task_names)])


def _round(arr: NDArray[Any], digits: int = 4) -> Any:
    return np.round(arr, digits).tolist() if np.issubdtype(arr.dtype, np.floating) else arr.tolist()


def record_steps(steps: int, every: int) -> NDArray[np.int64]:
    """Steps whose weights and shares results.json keeps: every `every`-th step and the last."""
    return np.array([t for t in range(steps) if t % every == 0 or t == steps - 1], dtype=np.int64)


def write_json(
    path: str | Path,
    task_names: Sequence[str],
    settings: dict[str, Any],
    outcome: Outcome,
    summary: dict[str, Any],
    record_every: int = 1,
) -> None:
    """Curves of every run (4 digits; weights and shares at every `record_every`-th step), the summary and whether
    the comparison was interrupted."""
    methods: dict[str, Any] = {}
    for r in outcome.records:
        kept = record_steps(r.steps, record_every)
        run = {
            "seed": r.seed,
            "final_accuracy": _round(r.final_accuracy),
            "worst": metrics.worst_task_accuracy(r.final_accuracy),
            "average": metrics.average_accuracy(r.final_accuracy),
            "eval_steps": _round(r.eval_steps),
            "accuracy": _round(r.accuracy),
            "rollouts_at_evals": _round(r.rollouts_at_evals),
            "record_steps": _round(kept),
            "weights": _round(r.weights[kept]),
            "shares": _round(r.shares[kept]),
            "rounds": _round(r.rounds),
            "generated": _round(r.generated),
            "trained": _round(r.trained),
            "budget_exhausted_steps": int(r.budget_exhausted.sum()),
            "wall_s": round(r.wall_s, 3),
            "metrics": r.metrics,
        }
        if r.seconds is not None:
            run["seconds_at_evals"] = _round(np.concatenate([[0.0], r.seconds])[r.eval_steps])
        if r.log is not None:
            run["log"] = r.log
        entry = methods.setdefault(r.method, {"runs": [], "summary": summary["methods"].get(r.method)})
        entry["runs"].append(run)
    doc = {
        "task_names": list(task_names),
        "settings": settings,
        "interrupted": outcome.interrupted,
        "reference": summary["reference"],
        "budget": summary["budget"],
        "methods": methods,
    }
    Path(path).write_text(json.dumps(doc))
