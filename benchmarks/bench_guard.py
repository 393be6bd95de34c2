"""The no-signal guard on the simulator: paper3 with and without a fourth task that never yields signal.

The dead task is never solved and its wrong answers are never formatted, so every group of it has all-equal
rewards (0) and every filter drops it. Printed side by side, from one run of this script: generated groups per
step and in total, steps that ran out of round budget, and the final accuracy of the three real tasks, for
MT-GRPO with the guard (the default), MT-GRPO without it, and MT-GRPO on paper3 alone.

    .venv/bin/python benchmarks/bench_guard.py [--seeds 0,1,2,3,4] [--steps 720] [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from mtgrpo_backends.harness.pool import run_many
from mtgrpo_backends.simulated.bench import SimulatedRunner
from mtgrpo_backends.simulated.policy import TaskModel
from mtgrpo_backends.simulated.suites import Suite, load_suite

DEAD = TaskModel(name="dead", skill=-30.0, spread=0.0, unsolvable=0.999999, format_rate=1e-9, speed=0.0)


def with_dead_task(suite: Suite) -> Suite:
    """The suite plus DEAD, which neither helps nor is helped by the others (no transfer)."""
    k = suite.num_tasks
    transfer = np.eye(k + 1)
    transfer[:k, :k] = suite.transfer
    return dataclasses.replace(suite, name=f"{suite.name}+dead", tasks=(*suite.tasks, DEAD), transfer=transfer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=720)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    base = load_suite("paper3")
    d = base.defaults
    cases = {
        "paper3, mt-grpo:0.2": (base, {}),
        "paper3 + dead, guard on (default)": (with_dead_task(base), {}),
        "paper3 + dead, guard off": (with_dead_task(base), {"guard_floor": 0.0}),
    }
    print(f"{args.steps} steps, B = {d.batch_size}, N = {d.group_size}, N_rs = {d.max_rounds}, seeds {seeds}")
    print(
        "| run | groups / step | total groups (vs paper3) | budget-exhausted steps | final acc % countdown / "
        "zebra / arc | mean weight of dead |"
    )
    print("|---|---|---|---|---|---|")
    reference = None
    for label, (suite, sampler) in cases.items():
        runner = SimulatedRunner(
            suite, args.steps, d.batch_size, d.group_size, d.max_rounds, record_every=args.steps, sampler=sampler
        )
        records = run_many(runner, [("mt-grpo:0.2", s) for s in seeds], args.workers).records
        total = float(np.mean([r.generated.sum() for r in records]))
        reference = reference or total
        acc = np.array([r.final_accuracy[:3] for r in records]) * 100
        cells = " / ".join(f"{m:.1f}±{s:.1f}" for m, s in zip(acc.mean(0), acc.std(0, ddof=1), strict=True))
        dead = np.mean([r.weights[:, 3].mean() for r in records]) if suite.num_tasks == 4 else float("nan")
        exhausted = np.mean([r.budget_exhausted.sum() for r in records])
        print(
            f"| {label} | {total / args.steps:.1f} | {total:.0f} ({total / reference:.2f}x) | {exhausted:.0f} | "
            f"{cells} | {dead:.3f} |"
        )


if __name__ == "__main__":
    main()
