"""Offline benchmark: weighting methods x seeds on a simulated suite, driven through the real Controller.

Every step runs the full controller conversation (begin_step, requests, report_arrays, finish, end_step) exactly
as a trainer would; the simulated policy only replaces generation and the gradient step.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_backends.simulated.policy import Groups, SimulatedPolicy
from mtgrpo_backends.simulated.suites import Suite
from mtgrpo_core import metrics
from mtgrpo_core.controller import Controller
from mtgrpo_core.sampler import BatchReport
from mtgrpo_core.signal_path import StepFacts, step_signals

DEFAULT_METHODS = (
    "grpo",
    "dapo",
    "sec-grpo",
    "sec-dapo",
    "mt-grpo:0.2",
    "mt-grpo:0.25",
    "iwu-only:0.2",
    "rps-only",
    "mt-grpo-noinfl:0.2",
)
THRESHOLDS = (0.3, 0.4, 0.5)
_PROGRESS_EVERY = 10  # steps between progress-counter updates in worker processes


@dataclass(frozen=True)
class RunSpec:
    """One benchmark run: a method on a suite for one seed."""

    method: str
    seed: int
    steps: int
    batch_size: int
    group_size: int
    max_rounds: int
    record_every: int = 1


@dataclass
class RunResult:
    """Curves of one run. accuracy is recorded at `accuracy_steps` (0 = before training, then after each
    recorded step); weights/shares at `record_steps` (the weights used and the shares realized at that step).
    Means over ALL steps (not only recorded ones) are exact."""

    method: str
    seed: int
    accuracy_steps: NDArray[np.int64]
    accuracy: NDArray[np.float64]
    record_steps: NDArray[np.int64]
    weights: NDArray[np.float64]
    shares: NDArray[np.float64]
    rounds: NDArray[np.int64]
    generated: NDArray[np.int64]
    budget_exhausted: int
    mean_weights: NDArray[np.float64]
    mean_shares: NDArray[np.float64]
    mean_share_distance: float
    mean_max_weight: float
    wall_s: float

    @property
    def final_accuracy(self) -> NDArray[np.float64]:
        return np.asarray(self.accuracy[-1], dtype=np.float64)


def build_controller(method: str, num_tasks: int, spec: RunSpec) -> Controller:
    """A method string ("mt-grpo:0.2", ... or a user's "module:Class", see mtgrpo_core.methods) for this run."""
    return Controller.from_method(
        method, num_tasks, spec.batch_size, spec.group_size, spec.seed, max_rounds=spec.max_rounds
    )


def step_facts(everything: Groups, batch: Groups, advantage: NDArray[Any], after: NDArray[Any]) -> StepFacts:
    """The step's facts for the core's signal path: every generated rollout, and the batch's rollouts with their
    advantages and clipped surrogate before (= A) and after the update."""
    n = everything.rewards.shape[1]
    sample_task = np.repeat(batch.task, n)
    return StepFacts(
        rollout_task=np.repeat(everything.task, n),
        rollout_reward=everything.rewards.ravel(),
        sample_task=sample_task,
        sample_advantage=advantage.ravel(),
        surrogate_before=advantage.ravel(),
        surrogate_after=after.ravel(),
    )


def _train_step(ctrl: Controller, policy: SimulatedPolicy) -> tuple[BatchReport, int]:
    """One training step (Algorithm 1): the batch conversation, the GRPO step, the controller's weight update."""
    builder = ctrl.begin_step()
    parts: list[Groups] = []
    n = 0
    while (request := builder.next_request()) is not None:
        g = policy.generate(request.counts)
        builder.report_arrays(g.task, np.arange(n, n + len(g)), rewards=g.rewards)
        parts.append(g)
        n += len(g)
    batch = builder.finish()
    everything = Groups.concat(parts)
    trained = everything.take(np.asarray(batch.keys, dtype=np.int64))
    advantage, after = policy.train_step(trained)
    ctrl.end_step(step_signals(step_facts(everything, trained, advantage, after), ctrl.num_tasks))
    return batch.report, len(batch)


def run_one(suite: Suite, spec: RunSpec, on_step: Callable[[], None] | None = None) -> RunResult:
    """Run one method for one seed through the real controller conversation; returns its curves."""
    start = time.perf_counter()
    k = suite.num_tasks
    policy = suite.policy(spec.seed, spec.group_size)
    ctrl = build_controller(spec.method, k, spec)
    acc_steps, acc = [0], [policy.heldout_accuracy()]
    rec_steps: list[int] = []
    weights_rec: list[NDArray[np.float64]] = []
    shares_rec: list[NDArray[np.float64]] = []
    rounds = np.zeros(spec.steps, dtype=np.int64)
    generated = np.zeros(spec.steps, dtype=np.int64)
    sum_w, sum_s = np.zeros(k), np.zeros(k)
    sum_tv = sum_max = 0.0
    exhausted = 0
    for step in range(spec.steps):
        try:
            report, n_batch = _train_step(ctrl, policy)
        except ValueError as err:
            raise ValueError(f"method {spec.method!r}, seed {spec.seed}, step {step}: {err}") from err
        shares = report.realized_shares
        rounds[step], generated[step] = report.rounds, int(report.generated.sum())
        exhausted += report.budget_exhausted
        sum_w += report.weights
        sum_s += shares
        sum_max += float(report.weights.max())
        if n_batch:
            sum_tv += metrics.share_distance(shares, report.weights)
        if step % spec.record_every == 0 or step == spec.steps - 1:
            rec_steps.append(step)
            weights_rec.append(report.weights)
            shares_rec.append(shares)
            acc_steps.append(step + 1)
            acc.append(policy.heldout_accuracy())
        if on_step is not None:
            on_step()
    t = max(spec.steps, 1)
    return RunResult(
        method=spec.method,
        seed=spec.seed,
        accuracy_steps=np.array(acc_steps),
        accuracy=np.array(acc),
        record_steps=np.array(rec_steps, dtype=np.int64),
        weights=np.array(weights_rec).reshape(-1, k),
        shares=np.array(shares_rec).reshape(-1, k),
        rounds=rounds,
        generated=generated,
        budget_exhausted=exhausted,
        mean_weights=sum_w / t,
        mean_shares=sum_s / t,
        mean_share_distance=sum_tv / t,
        mean_max_weight=sum_max / t,
        wall_s=time.perf_counter() - start,
    )


# -- running many: worker processes, progress, Ctrl-C -------------------------------------------------------
_counter: Any = None


def _init_worker(counter: Any) -> None:
    global _counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    _counter = counter


def _worker(job: tuple[Suite, RunSpec]) -> RunResult:
    suite, spec = job
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if done % _PROGRESS_EVERY == 0:
            with _counter.get_lock():
                _counter.value += _PROGRESS_EVERY

    result = run_one(suite, spec, tick)
    with _counter.get_lock():
        _counter.value += done % _PROGRESS_EVERY
    return result


@dataclass
class Outcome:
    """Finished runs, and whether the user interrupted before all were done."""

    results: list[RunResult] = field(default_factory=list)
    interrupted: bool = False


def run_many(
    suite: Suite,
    specs: Sequence[RunSpec],
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Outcome:
    """Run every spec (in worker processes when workers > 1). progress(n) is called with steps just finished.
    Ctrl-C stops the runs in flight and returns the finished ones with interrupted=True."""
    out = Outcome()
    if workers <= 1 or len(specs) <= 1:
        tick = (lambda: progress(1)) if progress is not None else None
        try:
            for spec in specs:
                out.results.append(run_one(suite, spec, tick))
        except KeyboardInterrupt:
            out.interrupted = True
        return out
    ctx = mp.get_context("fork")
    counter = ctx.Value("q", 0)
    pool = ctx.Pool(min(workers, len(specs)), initializer=_init_worker, initargs=(counter,))
    seen = 0
    try:
        pending = [pool.apply_async(_worker, ((suite, s),)) for s in specs]
        while pending:
            time.sleep(0.1)
            for job in [j for j in pending if j.ready()]:
                out.results.append(job.get())
                pending.remove(job)
            now = counter.value
            if progress is not None and now > seen:
                progress(now - seen)
            seen = now
        pool.close()
    except KeyboardInterrupt:
        out.interrupted = True
        pool.terminate()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    order = {(s.method, s.seed): i for i, s in enumerate(specs)}
    out.results.sort(key=lambda r: order[(r.method, r.seed)])
    return out


# -- summaries ----------------------------------------------------------------------------------------------
def _spread(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def summarize(results: Sequence[RunResult], reference: str | None = "dapo") -> dict[str, dict[str, Any]]:
    """Per method, over its seeds: final worst-task and average accuracy, Delta_m% vs the reference method (paired
    by seed), steps to each worst-task threshold, mean rounds, share distance, max weight, weights and shares."""
    by_method: dict[str, list[RunResult]] = {}
    for r in results:
        by_method.setdefault(r.method, []).append(r)
    ref_final = {r.seed: r.final_accuracy for r in by_method.get(reference or "", [])}
    out: dict[str, dict[str, Any]] = {}
    for method, runs in by_method.items():
        finals = [r.final_accuracy for r in runs]
        row: dict[str, Any] = {
            "seeds": [r.seed for r in runs],
            "worst": _spread([metrics.worst_task_accuracy(a) for a in finals]),
            "average": _spread([metrics.average_accuracy(a) for a in finals]),
            "final_per_task": _spread_rows(finals),
            "rounds": _spread([float(r.rounds.mean()) for r in runs]),
            "generated_per_step": _spread([float(r.generated.mean()) for r in runs]),
            "share_distance": _spread([r.mean_share_distance for r in runs]),
            "max_weight": _spread([r.mean_max_weight for r in runs]),
            "mean_weights": _spread_rows([r.mean_weights for r in runs]),
            "mean_shares": _spread_rows([r.mean_shares for r in runs]),
            "budget_exhausted_steps": _spread([float(r.budget_exhausted) for r in runs]),
            "wall_s": _spread([r.wall_s for r in runs]),
        }
        paired = [metrics.delta_m_percent(r.final_accuracy, ref_final[r.seed]) for r in runs if r.seed in ref_final]
        row["delta_m"] = _spread(paired) if paired else None
        row["steps_to"] = {}
        for thr in THRESHOLDS:
            hit = [metrics.steps_to_threshold(r.accuracy, thr, r.accuracy_steps) for r in runs]
            reached = [h for h in hit if h is not None]
            row["steps_to"][str(thr)] = {
                "reached": len(reached),
                "of": len(runs),
                **(_spread(reached) if reached else {"mean": None, "std": None}),
            }
        out[method] = row
    return out


def _spread_rows(rows: Sequence[NDArray[np.float64]]) -> dict[str, list[float]]:
    arr = np.asarray(rows)
    std = arr.std(axis=0, ddof=1) if arr.shape[0] > 1 else np.zeros(arr.shape[1])
    return {"mean": arr.mean(axis=0).tolist(), "std": std.tolist()}


def _pm(stat: dict[str, Any] | None, scale: float = 1.0, digits: int = 1) -> str:
    if stat is None or stat["mean"] is None:
        return "-"
    return f"{stat['mean'] * scale:.{digits}f}±{stat['std'] * scale:.{digits}f}"


def format_table(summary: dict[str, dict[str, Any]], task_names: Sequence[str], reference: str | None) -> str:
    """The main table (accuracies in %, mean±std over seeds) and a per-task weight -> realized share table."""
    thr_cols = [f"steps@{int(t * 100)}%" for t in THRESHOLDS]
    head = ["method", "worst %", "avg %", f"Δm% vs {reference or '-'}", *thr_cols, "rounds", "TV(share,z)", "max z"]
    lines = []
    for method, row in summary.items():
        steps = []
        for thr in THRESHOLDS:
            s = row["steps_to"][str(thr)]
            steps.append(f"{_pm(s, digits=0)} ({s['reached']}/{s['of']})" if s["reached"] else f"- (0/{s['of']})")
        lines.append(
            [
                method,
                _pm(row["worst"], 100),
                _pm(row["average"], 100),
                _pm(row["delta_m"]),
                *steps,
                _pm(row["rounds"], digits=2),
                _pm(row["share_distance"], digits=3),
                _pm(row["max_weight"], digits=3),
            ]
        )
    text = _columns(head, lines)
    if len(task_names) <= 12:
        text += "\n\n" + _per_task_table(summary, task_names)
    return text


def _per_task_table(summary: dict[str, dict[str, Any]], task_names: Sequence[str]) -> str:
    """Final accuracy % and mean weight -> mean realized share per task: methods as rows for up to 4 tasks,
    as columns beyond."""
    cells = {
        m: [
            f"{a * 100:.1f} / {x:.2f}→{y:.2f}"
            for a, x, y in zip(
                row["final_per_task"]["mean"], row["mean_weights"]["mean"], row["mean_shares"]["mean"], strict=True
            )
        ]
        for m, row in summary.items()
    }
    if len(task_names) <= 4:
        head = ["method", *[f"{n}: acc% / z→share" for n in task_names]]
        return _columns(head, [[m, *c] for m, c in cells.items()])
    head = ["task: acc% / z→share", *cells]
    return _columns(head, [[n, *[c[j] for c in cells.values()]] for j, n in enumerate(task_names)])


def _columns(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*["-" * w for w in widths]), *[fmt.format(*r) for r in rows]])


# -- output -------------------------------------------------------------------------------------------------
def _round(arr: NDArray[Any], digits: int = 4) -> Any:
    return np.round(arr, digits).tolist() if np.issubdtype(arr.dtype, np.floating) else arr.tolist()


def write_json(
    path: str | Path,
    suite: Suite,
    settings: dict[str, Any],
    outcome: Outcome,
    summary: dict[str, dict[str, Any]],
) -> None:
    """All curves per method and seed (rounded to 4 digits), the summary, and whether the run was interrupted."""
    methods: dict[str, Any] = {}
    for r in outcome.results:
        methods.setdefault(r.method, {"runs": [], "summary": summary.get(r.method)})["runs"].append(
            {
                "seed": r.seed,
                "final_accuracy": _round(r.final_accuracy),
                "worst": metrics.worst_task_accuracy(r.final_accuracy),
                "average": metrics.average_accuracy(r.final_accuracy),
                "accuracy_steps": _round(r.accuracy_steps),
                "accuracy": _round(r.accuracy),
                "record_steps": _round(r.record_steps),
                "weights": _round(r.weights),
                "shares": _round(r.shares),
                "rounds": _round(r.rounds),
                "generated": _round(r.generated),
                "budget_exhausted_steps": r.budget_exhausted,
                "wall_s": round(r.wall_s, 3),
            }
        )
    doc = {
        "suite": suite.name,
        "task_names": suite.task_names,
        "settings": settings,
        "interrupted": outcome.interrupted,
        "methods": methods,
    }
    Path(path).write_text(json.dumps(doc))


def _mean_curve(runs: Sequence[RunResult], attr: str) -> NDArray[np.float64]:
    return np.asarray(np.mean([getattr(r, attr) for r in runs], axis=0))


def _smooth(x: NDArray[np.float64], width: int) -> NDArray[np.float64]:
    if width <= 1 or x.shape[0] < width:
        return x
    kernel = np.ones(width) / width
    return np.stack([np.convolve(x[:, j], kernel, mode="valid") for j in range(x.shape[1])], axis=1)


def plot_curves(path: str | Path, suite: Suite, results: Sequence[RunResult]) -> None:
    """Figure 6 style: per method (columns), per-task accuracy, task weights and realized batch shares over steps
    (means over seeds; shares smoothed over ~5% of the steps). With more than 12 tasks: min / median / max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, list[RunResult]] = {}
    for r in results:
        by_method.setdefault(r.method, []).append(r)
    cols = len(by_method)
    fig, axes = plt.subplots(3, cols, figsize=(2.6 * cols + 1, 6.6), sharex=True, squeeze=False)
    many = suite.num_tasks > 12
    for c, (method, runs) in enumerate(by_method.items()):
        acc = _mean_curve(runs, "accuracy")
        steps = runs[0].accuracy_steps
        w = _mean_curve(runs, "weights")
        sh = _smooth(_mean_curve(runs, "shares"), max(1, len(runs[0].record_steps) // 20))
        rec = runs[0].record_steps
        sh_steps = rec[len(rec) - sh.shape[0] :] if sh.shape[0] else rec
        for row, (x, y) in enumerate(((steps, acc), (rec, w), (sh_steps, sh))):
            ax = axes[row, c]
            if many:
                for q, style, name in ((0.0, ":", "min"), (0.5, "-", "median"), (1.0, "--", "max")):
                    ax.plot(x, np.quantile(y, q, axis=1), style, color="k", lw=1, label=name)
            else:
                for j in range(suite.num_tasks):
                    ax.plot(x, y[:, j], lw=1, label=suite.task_names[j])
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0, c].set_title(method, fontsize=9)
        axes[2, c].set_xlabel("step")
    for row, label in enumerate(("held-out accuracy", "task weight z", "realized share")):
        axes[row, 0].set_ylabel(label)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"suite {suite.name}: mean over {len(next(iter(by_method.values())))} seed(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def plot_sweep(path: str | Path, summary: dict[str, dict[str, Any]], swept: Sequence[str]) -> None:
    """Worst-task vs average accuracy (mean ± std over seeds) for the swept methods (a line) and the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    xs = [summary[m]["average"]["mean"] * 100 for m in swept]
    ys = [summary[m]["worst"]["mean"] * 100 for m in swept]
    ax.plot(xs, ys, "-", color="C0", lw=1)
    for m in summary:
        row = summary[m]
        x, y = row["average"]["mean"] * 100, row["worst"]["mean"] * 100
        ax.errorbar(
            x,
            y,
            xerr=row["average"]["std"] * 100,
            yerr=row["worst"]["std"] * 100,
            fmt="o" if m in swept else "s",
            color="C0" if m in swept else "C3",
            ms=4,
            capsize=2,
        )
        ax.annotate(m, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("average accuracy %")
    ax.set_ylabel("worst-task accuracy %")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- calibration --------------------------------------------------------------------------------------------
def calibrate_speeds(
    suite: Suite, seeds: int = 3, iterations: int = 12, workers: int = 2, bracket: tuple[float, float] = (1e-3, 1e3)
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Learning speeds eta_k at which uniform GRPO, run at the suite's defaults, ends at each task's
    `grpo_accuracy` (mean over `seeds` seeds): per-task bisection on log eta, all tasks at once, for a fixed
    number of iterations. Returns (speeds, the final accuracies reached at those speeds). Uses only GRPO runs."""
    targets = np.array([np.nan if a is None else a for a in suite.grpo_accuracy], dtype=np.float64)
    if targets.shape != (suite.num_tasks,) or np.isnan(targets).any():
        raise ValueError(f"suite {suite.name!r}: every task needs a grpo_accuracy to calibrate against")
    lo = np.full(suite.num_tasks, np.log(bracket[0]))
    hi = np.full(suite.num_tasks, np.log(bracket[1]))
    d = suite.defaults
    specs = [RunSpec("grpo", s, d.steps, d.batch_size, d.group_size, d.max_rounds, d.steps) for s in range(seeds)]
    reached = np.zeros(suite.num_tasks)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        tasks = tuple(replace(t, speed=float(np.exp(m))) for t, m in zip(suite.tasks, mid, strict=True))
        trial = replace(suite, tasks=tasks)
        outcome = run_many(trial, specs, workers)
        if outcome.interrupted:
            raise KeyboardInterrupt
        reached = np.mean([r.final_accuracy for r in outcome.results], axis=0)
        low_side = reached < targets
        lo = np.where(low_side, mid, lo)
        hi = np.where(low_side, hi, mid)
    return np.exp((lo + hi) / 2), reached
