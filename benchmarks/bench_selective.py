"""Selective rollouts on a finite prompt pool: MT-GRPO without skipping, with the history rule, and with the oracle.

Every run uses the strict filter (all-correct and all-wrong groups dropped, as the paper's 3-task runs) and
estimated filter rates. GRPO and DAPO (no skipping) set the equal generation budget (the smallest total of any
run: GRPO's) and are the baselines of the worst-task comparison. MT-GRPO runs with the joint planner (q 0.9,
M_acc 25, M_os 6, given explicitly), once on-policy and once with carry-over 1, each without skipping, with
`history` and with `oracle` (docs/selective.md).
Printed as markdown tables (mean±std over seeds):

- gen/used: prompts generated per prompt trained, over the run and over its second half (when every prompt the
  run drew twice has a history); rounds; TV(realized share, z); final worst/average accuracy at equal steps and at
  the equal generation budget;
- per task: draws per pool prompt, retries per prompt handed out, skipped per handed out, the skip error (share
  of skipped prompts that would have been informative, from their true probability) and the same error as a
  trainer observes it (the share of retried prompts that came back informative).

    .venv/bin/python benchmarks/bench_selective.py [--suite paper3-pool] [--seeds 0,1,2,3,4] [--steps 720]
        [--workers 2] [--eval-every 10] [--plans on-policy,carry-over 1] [--pool-size N] [--max-skips 0]
        [--exploration 0.1] [--no-stand-ins] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import numpy as np

from mtgrpo_backends.harness.pool import run_many
from mtgrpo_backends.harness.record import RunRecord
from mtgrpo_backends.harness.summary import spread, summarize
from mtgrpo_backends.simulated.bench import SimulatedRunner
from mtgrpo_backends.simulated.pool_feed import Skip
from mtgrpo_backends.simulated.suites import Suite, load_suite
from mtgrpo_core import metrics
from mtgrpo_core.prompts.history import SelectionConfig

MT = "mt-grpo:0.2"
LEAN = {"planner": "joint", "confidence": 0.9, "max_inflation": 25.0, "oversample": 6.0}  # given explicitly
PLANS: dict[str, dict[str, Any]] = {"on-policy": {**LEAN, "carry_over": 0}, "carry-over 1": {**LEAN, "carry_over": 1}}
SKIPS: tuple[Skip, ...] = ("none", "history", "oracle")


def _pm(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    s = spread(values)
    return f"{s['mean'] * scale:.{digits}f}±{s['std'] * scale:.{digits}f}"


def _stat(s: dict[str, float]) -> str:
    return f"{s['mean'] * 100:.1f}±{s['std'] * 100:.1f}"


def _task_columns(rs: list[RunRecord], sizes: np.ndarray) -> list[str]:
    """Per-task cells (task means over seeds): draws per pool prompt, retried and skipped per handed out, the true
    and the observed skip error, final accuracy %."""
    logs = [r.log or {} for r in rs]
    handed, retried, skipped, flipped = (
        np.array([g[key] for g in logs], dtype=float)
        for key in ("handed_out", "retried", "skipped", "retried_informative")
    )
    error = np.array([[np.nan if e is None else e for e in g["skip_error"]] for g in logs], dtype=float)
    acc = np.array([r.final_accuracy for r in rs]) * 100
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = [(handed / sizes, 2), (retried / handed, 2), (skipped / handed, 1), (error, 2), (flipped / retried, 2)]
    cols.append((acc, 1))
    return [" / ".join("-" if np.isnan(c).all() else f"{np.nanmean(c):.{d}f}" for c in a.T) for a, d in cols]


def _tv(r: RunRecord) -> float:
    return float(np.mean([metrics.share_distance(s, z) for s, z in zip(r.shares, r.weights, strict=True)]))


def _runs(args: argparse.Namespace, suite: Suite) -> dict[str, list[RunRecord]]:
    """label -> records of every seed."""
    d = suite.defaults
    selection = SelectionConfig(exploration=args.exploration, max_skips=args.max_skips or None)
    jobs: list[tuple[str, str, dict[str, Any], Skip]] = [("grpo", "grpo", {}, "none"), ("dapo", "dapo", {}, "none")]
    for plan in args.plans:
        sampler = PLANS[plan]
        jobs += [(f"{MT} {plan}, skip {skip}", MT, sampler, skip) for skip in SKIPS]
    out: dict[str, list[RunRecord]] = {}
    for label, method, sampler, skip in jobs:
        runner = SimulatedRunner(
            suite, args.steps, d.batch_size, d.group_size, d.max_rounds, args.eval_every, sampler,
            filter="strict", skip=skip, selection=selection, stand_ins=not args.no_stand_ins,
        )  # fmt: skip
        records = run_many(runner, [(method, s) for s in args.seeds], args.workers).records
        out[label] = [dataclasses.replace(r, method=label) for r in records]
        print(f"  ran {label}: {runner.controller(method, 0).sampler.config}", flush=True)
    return out


def _tables(runs: dict[str, list[RunRecord]], suite: Suite) -> str:
    summary = summarize([r for rs in runs.values() for r in rs], reference=None)
    half = next(iter(runs.values()))[0].steps // 2
    lines = [
        f"equal generation budget: {summary['budget']['rollouts']:,} rollouts ({summary['budget']['method']})",
        "",
        "| run | gen/used | gen/used, 2nd half | rounds | TV(share, z) | worst % | avg % | worst %@budget | "
        "avg %@budget | step@budget |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, rs in runs.items():
        row = summary["methods"][label]
        b = row["budget"]
        late = [float(r.generated[half:].sum() / max(r.trained[half:].sum(), 1)) for r in rs]
        cells = [
            _pm([r.metrics["gen/used"] for r in rs]),
            _pm(late),
            _pm([float(r.rounds.mean()) for r in rs]),
            _pm([_tv(r) for r in rs], digits=3),
            *(_stat(x) for x in (row["worst"], row["average"], b["worst"], b["average"])),
            f"{b['step']['mean']:.0f}",
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    names, sizes = suite.task_names, np.array(suite.pool_sizes or [1] * suite.num_tasks)
    lines += [
        "",
        "Per task (" + " / ".join(names) + "): draws per pool prompt, retried per handed out, skipped per handed "
        "out, skip error (true), skip error (observed from retries), final accuracy %",
        "",
        "| run | draws / prompt | retried | skipped / out | skip error | observed | accuracy % |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rs in runs.items():
        lines.append(f"| {label} | " + " | ".join(_task_columns(rs, sizes)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="paper3-pool")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=720)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=10, help="held-out accuracy every this many steps")
    parser.add_argument("--plans", default=",".join(PLANS), help=f"MT-GRPO sampler plans, from {list(PLANS)}")
    parser.add_argument("--pool-size", type=int, default=None, help="prompts per task (default: the suite's)")
    parser.add_argument("--exploration", type=float, default=SelectionConfig.exploration)
    parser.add_argument("--max-skips", type=int, default=SelectionConfig.max_skips, help="0: never forced")
    parser.add_argument("--no-stand-ins", action="store_true", help="ablation: skipped prompts not in J_k")
    parser.add_argument("--out", default=None, help="write the per-run numbers to this JSON file")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.plans = [p.strip() for p in args.plans.split(",")]
    if not set(args.plans) <= set(PLANS):
        raise SystemExit(f"--plans {args.plans}: expected names from {list(PLANS)}")
    suite = load_suite(args.suite)
    if suite.pool_sizes is None:
        raise SystemExit(f"--suite {args.suite}: expected a suite with a finite pool (paper3-pool, paper9-pool)")
    if args.pool_size is not None:
        suite = dataclasses.replace(suite, pool_sizes=(args.pool_size,) * suite.num_tasks)
    print(
        f"suite {suite.name}, pools {list(suite.pool_sizes or [])}, {args.steps} steps, B={suite.defaults.batch_size}, "
        f"strict filter, seeds {args.seeds}, exploration {args.exploration}, max_skips {args.max_skips}",
        flush=True,
    )
    runs = _runs(args, suite)
    print(_tables(runs, suite))
    if args.out:
        doc = {
            label: [
                {"seed": r.seed, "metrics": r.metrics, "log": r.log, "final_accuracy": r.final_accuracy.tolist()}
                for r in rs
            ]
            for label, rs in runs.items()
        }
        with open(args.out, "w") as handle:
            json.dump({"settings": {**vars(args), "pool_sizes": suite.pool_sizes}, "runs": doc}, handle, indent=1)


if __name__ == "__main__":
    main()
