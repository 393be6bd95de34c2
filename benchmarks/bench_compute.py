"""Compute-matched comparison on the simulator: methods with different request planners and carry-over, at equal
training steps and at an equal generation budget, in one table (the shared harness's summary).

    .venv/bin/python benchmarks/bench_compute.py --suite paper3 [--seeds 0,1,2,3,4] [--eval-every 10]

Each variant is a method string plus SamplerConfig settings; the budget is the smallest total of generated
rollouts of any run (GRPO's), and each run is scored at its last evaluation within it.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mtgrpo_backends.harness.pool import run_many
from mtgrpo_backends.harness.report import format_table
from mtgrpo_backends.harness.summary import summarize
from mtgrpo_backends.simulated.bench import SimulatedRunner
from mtgrpo_backends.simulated.suites import load_suite

# "mt-grpo" and "rps-only" plan lean by default (joint planner q = 0.9, carry-over 1, caps M_acc 25, M_os 6)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("grpo", {}),
    "dapo": ("dapo", {}),
    "mt-grpo-paper (Algorithm 2)": ("mt-grpo-paper:0.2", {}),
    "mt-grpo on-policy (joint q=0.9)": ("mt-grpo:0.2", {"carry_over": 0}),
    "mt-grpo (default)": ("mt-grpo:0.2", {}),
    "mt-grpo (default, q=0.5)": ("mt-grpo:0.2", {"confidence": 0.5}),
    "rps-only (default)": ("rps-only", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="paper3")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    suite = load_suite(args.suite)
    d = suite.defaults
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"suite {suite.name}: {d.steps} steps, B = {d.batch_size}, N = {d.group_size}, N_rs = {d.max_rounds}, "
        f"seeds {seeds}, evaluation every {args.eval_every} steps"
    )
    records = []
    for label, (method, sampler) in VARIANTS.items():
        runner = SimulatedRunner(
            suite, d.steps, d.batch_size, d.group_size, d.max_rounds, record_every=args.eval_every, sampler=sampler
        )
        runs = run_many(runner, [(method, s) for s in seeds], args.workers).records
        records += [dataclasses.replace(r, method=label) for r in runs]
    print(format_table(summarize(records, reference="dapo"), suite.task_names))


if __name__ == "__main__":
    main()
