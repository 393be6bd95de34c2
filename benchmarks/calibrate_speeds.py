"""Calibrate a simulated suite's learning speeds eta_k on uniform GRPO (see docs/benchmarks.md).

Per-task bisection on log eta, all tasks at once, for a fixed number of iterations: at each iteration uniform
GRPO runs at the suite's defaults (through the comparison harness) and each task's bracket moves towards its
`grpo_accuracy`. Prints the speeds and the final accuracies reached at them.

    .venv/bin/python benchmarks/calibrate_speeds.py --suite paper3 [--seeds 0,1,2] [--iterations 12]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from mtgrpo_backends.harness import run_many
from mtgrpo_backends.options import Ints, parse, run_command
from mtgrpo_backends.simulated.bench import SimulatedRunner
from mtgrpo_backends.simulated.suites import Suite, load_suite


def calibrate_speeds(
    suite: Suite,
    seeds: Sequence[int] = (0, 1, 2),
    iterations: int = 12,
    workers: int = 2,
    bracket: tuple[float, float] = (1e-3, 1e3),
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Learning speeds at which uniform GRPO, run at the suite's defaults, ends at each task's `grpo_accuracy`
    (mean over the seeds); returns (speeds, the final accuracies reached at those speeds)."""
    targets = np.array([np.nan if a is None else a for a in suite.grpo_accuracy], dtype=np.float64)
    if targets.shape != (suite.num_tasks,) or np.isnan(targets).any():
        raise ValueError(f"suite {suite.name!r}: every task needs a grpo_accuracy to calibrate against")
    lo = np.full(suite.num_tasks, np.log(bracket[0]))
    hi = np.full(suite.num_tasks, np.log(bracket[1]))
    d = suite.defaults
    reached = np.zeros(suite.num_tasks)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        tasks = tuple(replace(t, speed=float(np.exp(m))) for t, m in zip(suite.tasks, mid, strict=True))
        runner = SimulatedRunner(
            replace(suite, tasks=tasks), d.steps, d.batch_size, d.group_size, d.max_rounds, d.steps
        )
        outcome = run_many(runner, [("grpo", s) for s in seeds], workers)
        if outcome.interrupted:
            raise KeyboardInterrupt
        reached = np.mean([r.final_accuracy for r in outcome.records], axis=0)
        low_side = reached < targets
        lo = np.where(low_side, mid, lo)
        hi = np.where(low_side, hi, mid)
    return np.exp((lo + hi) / 2), reached


@dataclass(frozen=True)
class CalibrateArgs:
    """benchmarks/calibrate_speeds.py."""

    suite: str = "paper3"
    """built-in suite or the path of a suite .json file whose tasks all have a grpo_accuracy"""
    seeds: Ints = (0, 1, 2)
    """seeds of the GRPO runs averaged at each iteration"""
    iterations: int = 12
    """bisection steps on log eta"""
    workers: int = 2
    """worker processes"""


def main(argv: Sequence[str]) -> int:
    def body() -> int:
        args = parse(CalibrateArgs, argv, "calibrate_speeds.py", "Calibrate a suite's learning speeds on GRPO.")
        suite = load_suite(args.suite)
        speeds, reached = calibrate_speeds(suite, args.seeds, args.iterations, args.workers)
        for name, eta, acc, target in zip(suite.task_names, speeds, reached, suite.grpo_accuracy, strict=True):
            print(f"{name:<24} learning_speed {eta:.4g}   GRPO reaches {acc:.3f} (target {target})")
        return 0

    return run_command("calibrate_speeds.py", body)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
