"""Synchronous training vs the streaming mode (issue 21 item 2) on the simulator's clock (docs/benchmarks.md).

For each suite and seed set, runs GRPO, DAPO and MT-GRPO synchronously and with steps_ahead 1 and 2, each with
carry-over (the age bound) steps_ahead or steps_ahead + 1 (room to keep an ahead group's surplus one more step),
through the real controller (steps_ahead 1 also with each request issued as its step begins, "begin"), and prints
per configuration: worst and average accuracy at equal steps, at the equal
generation budget and at the equal wall-clock (the fewest rollouts / the shortest simulated time of any run of the
suite), throughput (steps per simulated hour, and its ratio to the same method run synchronously), the realized
shares' distance to the weights and the mean age of trained groups.

    .venv/bin/python benchmarks/bench_streaming.py                      # paper3 and paper9, seeds 0-4 and 5-9
    .venv/bin/python benchmarks/bench_streaming.py --suites paper3 --seed-sets 0-4
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

from mtgrpo_backends.harness.record import RunRecord
from mtgrpo_backends.harness.summary import summarize
from mtgrpo_backends.simulated.bench import SimulatedRunner
from mtgrpo_backends.simulated.suites import load_suite

METHODS = ("grpo", "dapo", "mt-grpo:0.2")
SEED_SETS = {"0-4": range(5), "5-9": range(5, 10)}
MODES = ((1, 1), (1, 2), (2, 2), (2, 3))  # (steps_ahead, carry_over), each request issued after finish()
EARLY = ((1, 1), (1, 2))  # the same, each request issued as its step begins (SimulatedRunner.ahead_at "begin")


def _run(job: tuple[SimulatedRunner, str, str, int]) -> RunRecord:
    runner, method, label, seed = job
    return replace(runner(method, seed), method=label)


def runners(suite: str) -> dict[str, SimulatedRunner]:
    """{label: the runner of one mode} at the suite's defaults: synchronous, and steps_ahead s with carry-over
    (the age bound) s or s + 1 (room to keep an ahead group's surplus for one more step), the ahead request issued
    after finish() or ("begin") as its step begins."""
    s = load_suite(suite)
    d = s.defaults
    base = SimulatedRunner(s, d.steps, d.batch_size, d.group_size, d.max_rounds, d.record_every)
    out = {"sync": base}
    for ahead, age in MODES:
        out[f"ahead {ahead}/age {age}"] = replace(base, sampler={"steps_ahead": ahead, "carry_over": age})
    for ahead, age in EARLY:
        early = replace(base, sampler={"steps_ahead": ahead, "carry_over": age}, ahead_at="begin")
        out[f"ahead {ahead}/age {age} begin"] = early
    return out


def _pm(block: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    return f"{block['mean'] * scale:.{digits}f}±{block['std'] * scale:.{digits}f}"


def table(records: list[RunRecord]) -> str:
    """One row per configuration: accuracy at equal steps, generation and wall-clock; throughput; shares; age."""
    summary = summarize(records, reference=None)
    rows = summary["methods"]
    rate = {m: r["metrics"]["steps/h"]["mean"] for m, r in rows.items()}
    head = f"{'configuration':<30}{'worst/avg @steps':<22}{'worst/avg @rollouts':<22}{'worst/avg @clock':<22}"
    head += f"{'steps/h':<16}{'x sync':<8}{'TV(share,z)':<14}{'mean age':<10}"
    lines = [head, "-" * len(head)]
    for m, r in rows.items():
        sync = rate.get(m.split(" ")[0] + " sync")
        speedup = f"{rate[m] / sync:.2f}" if sync else "-"
        lines.append(
            f"{m:<30}{_pm(r['worst']) + ' / ' + _pm(r['average']):<22}"
            f"{_pm(r['budget']['worst']) + ' / ' + _pm(r['budget']['average']):<22}"
            f"{_pm(r['clock']['worst']) + ' / ' + _pm(r['clock']['average']):<22}"
            f"{_pm(r['metrics']['steps/h'], 1.0):<16}{speedup:<8}{_pm(r['share_distance'], 1.0, 3):<14}"
            f"{_pm(r['metrics']['mean age'], 1.0, 2):<10}"
        )
    budget, clock = summary["budget"], summary["clock"]
    lines.append(
        f"equal rollouts: {budget['rollouts']:,} ({budget['method']}); equal wall-clock: "
        f"{clock['seconds'] / 3600:.1f} simulated hours ({clock['method']})"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default="paper3,paper9")
    parser.add_argument("--seed-sets", default="0-4,5-9")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        for suite in args.suites.split(","):
            modes = runners(suite)
            for label in args.seed_sets.split(","):
                jobs = [
                    (runner, method, f"{method} {mode}", seed)
                    for method in METHODS
                    for mode, runner in modes.items()
                    for seed in SEED_SETS[label]
                ]
                records = list(pool.map(_run, jobs))
                print(f"\n{suite}, seeds {label}:")
                print(table(records))
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
