"""RP-SAMPLER variants on groups with known per-task acceptance rates: ratio fidelity, rounds, generation cost,
and the core's own time per batch, side by side in one run; then the core time per controller step (begin_step to
end_step, CPU time) of the lean default against the paper planner.

    .venv/bin/python benchmarks/bench_sampler.py [--batches 400]
    .venv/bin/python benchmarks/bench_sampler.py --core-only [--repeats 5]   # only the controller-step table
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from mtgrpo_core import Controller, StepFacts
from mtgrpo_core.sampling.acceptance import KnownFilterRate
from mtgrpo_core.sampling.config import SamplerConfig
from mtgrpo_core.sampling.sampler import RatioPreservingSampler

VARIANTS = {
    "DAPO truncation": dict(ratio_constraint=False, acceptance_aware=False, targets="multinomial"),
    "paper Alg. 2 (multinomial)": dict(targets="multinomial", planner="paper"),
    "paper Alg. 2 + apportion": dict(targets="apportion", planner="paper"),
    "posterior planner (q=0.9)": dict(targets="apportion", planner="posterior", confidence=0.9),
    "posterior planner (q=0.8)": dict(targets="apportion", planner="posterior", confidence=0.8),
    "joint planner (q=0.9)": dict(targets="apportion", planner="joint", confidence=0.9),
    "joint planner (q=0.5)": dict(targets="apportion", planner="joint", confidence=0.5),
    "joint (q=0.9) + carry-over 1": dict(targets="apportion", planner="joint", confidence=0.9, carry_over=1),
    "joint (q=0.5) + carry-over 1": dict(targets="apportion", planner="joint", confidence=0.5, carry_over=1),
    "posterior (q=0.9) + carry-over 1": dict(targets="apportion", planner="posterior", confidence=0.9, carry_over=1),
    # the methods' lean default (mtgrpo_core.methods.LEAN) and its strictly on-policy mode
    "default: joint (q=0.9) + carry 1, M_acc 25, M_os 6": dict(
        targets="apportion", planner="joint", confidence=0.9, carry_over=1, max_inflation=25.0, oversample=6.0
    ),
    "on-policy: joint (q=0.9), M_acc 25, M_os 6": dict(
        targets="apportion", planner="joint", confidence=0.9, max_inflation=25.0, oversample=6.0
    ),
}
# at K = 100, B = 1024 (the scale case): the paper planner, the posterior planner, on-policy and default
LARGE = (
    "paper Alg. 2 + apportion",
    "posterior planner (q=0.9)",
    "joint planner (q=0.9)",
    "on-policy: joint (q=0.9), M_acc 25, M_os 6",
    "default: joint (q=0.9) + carry 1, M_acc 25, M_os 6",
)


def run(weights: np.ndarray, rates: np.ndarray, batch: int, variant: dict, known: bool, batches: int) -> dict:
    """Drive `batches` conversations with Bernoulli(1 - rate) acceptance; time only the sampler's own calls."""
    k = weights.shape[0]
    config = SamplerConfig(batch_size=batch, group_size=8, max_rounds=10, **variant)
    sampler = RatioPreservingSampler(k, config, seed=0, estimator=KnownFilterRate(rates) if known else None)
    rng = np.random.default_rng(1)
    tv, rounds, gen, used, core = [], [], 0, 0, 0.0
    next_key = 0
    for step in range(batches):
        t0 = time.perf_counter()
        builder = sampler.begin(weights, step)
        req = builder.next_request()
        core += time.perf_counter() - t0
        while req is not None:
            tasks = rng.permutation(np.repeat(np.arange(k), req.counts))  # prompts arrive in shuffled order
            keys = np.arange(next_key, next_key + tasks.shape[0])
            next_key += tasks.shape[0]
            info = rng.random(tasks.shape[0]) >= rates[tasks]
            t0 = time.perf_counter()
            builder.report_arrays(tasks, keys, informative=info)
            req = builder.next_request()
            core += time.perf_counter() - t0
        t0 = time.perf_counter()
        result = builder.finish()
        core += time.perf_counter() - t0
        rep = result.report
        tv.append(0.5 * np.abs(rep.realized_shares - weights).sum())
        rounds.append(rep.rounds)
        gen += int(rep.generated.sum())
        used += len(result)
    return {
        "tv": np.mean(tv),
        "rounds": np.mean(rounds),
        "gen_per_used": gen / max(used, 1),
        "ms": 1000 * core / batches,
    }


def controller_step_ms(method: str, k: int, b: int, steps: int, group_size: int = 8, ahead: int = 0) -> float:
    """CPU ms per step inside the Controller (begin_step, the conversation's calls, finish, ahead with steps_ahead,
    end_step(StepFacts)), the simulated trainer's work excluded: generation (rewards Bernoulli(p_k), p_k ~ U[0.05,
    0.9]) and a policy update (random advantages and surrogate values for every trained sample). ahead > 0: the
    streaming mode with carry-over ahead + 1, each ahead request reported at the next step."""
    streaming: dict[str, Any] = {"steps_ahead": ahead, "carry_over": ahead + 1} if ahead else {}
    ctrl = Controller.from_method(method, k, b, group_size, seed=0, **streaming)
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.9, size=k)
    next_key, core, clock = 0, 0.0, time.process_time
    due: dict[int, list[tuple[int, np.ndarray]]] = {}

    def generate(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nonlocal next_key
        tasks = rng.permutation(np.repeat(np.arange(k), counts))
        keys = np.arange(next_key, next_key + tasks.size)
        next_key += tasks.size
        return tasks, keys, (rng.random((tasks.size, group_size)) < p[tasks, None]).astype(float)

    for step in range(steps):
        reports = [(version, *generate(counts)) for version, counts in due.pop(step, [])]
        t0 = clock()
        builder = ctrl.begin_step()
        for version, tasks, keys, rewards in reports:
            builder.report_arrays(tasks, keys, rewards=rewards, version=version)
        req = builder.next_request()
        core += clock() - t0
        while req is not None:
            tasks, keys, rewards = generate(req.counts)
            t0 = clock()
            builder.report_arrays(tasks, keys, rewards=rewards)
            req = builder.next_request()
            core += clock() - t0
        t0 = clock()
        batch = builder.finish()
        request = builder.ahead() if ahead else None
        core += clock() - t0
        if request is not None:
            due.setdefault(step + ahead, []).append((step, request.counts))
        sample_task = np.repeat(batch.tasks, group_size)
        before = rng.normal(size=sample_task.size)
        facts = StepFacts(
            sample_task=sample_task,
            sample_advantage=rng.normal(size=sample_task.size),
            surrogate_before=before,
            surrogate_after=before + 0.01 * rng.normal(size=sample_task.size),
        )
        t0 = clock()
        ctrl.end_step(facts)
        core += clock() - t0
    return 1000 * core / steps


CORE_METHODS = {"lean default": ("mt-grpo:0.2", 0), "paper planner": ("mt-grpo-paper:0.2", 0)}
CORE_METHODS["streaming"] = ("mt-grpo:0.2", 1)
CORE_CASES = ((9, 256, 300), (1000, 4096, 20))  # K, B, steps per repeat


def core_table(repeats: int) -> None:
    """The lean default against the paper planner and the streaming mode, interleaved repeats in one process,
    median per cell."""
    print("\n## Core time per controller step (CPU ms, begin_step to end_step, median of", repeats, "repeats)")
    print("| K | B | lean default (mt-grpo:0.2) | paper planner (mt-grpo-paper:0.2) | lean / paper |", end="")
    print(" streaming (steps_ahead 1, carry-over 2) | streaming / lean |")
    print("|---|---|---|---|---|---|---|")
    for k, b, steps in CORE_CASES:
        times: dict[str, list[float]] = {name: [] for name in CORE_METHODS}
        for _ in range(repeats):
            for name, (method, ahead) in CORE_METHODS.items():
                times[name].append(controller_step_ms(method, k, b, steps, ahead=ahead))
        lean, paper, stream = (float(np.median(times[name])) for name in CORE_METHODS)
        print(f"| {k} | {b} | {lean:.2f} | {paper:.2f} | {lean / paper:.2f} | {stream:.2f} | {stream / lean:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the controller-step table (median)")
    parser.add_argument("--core-only", action="store_true", help="print only the controller-step table")
    args = parser.parse_args()
    if args.core_only:
        core_table(args.repeats)
        return
    rng = np.random.default_rng(0)
    cases = {
        "3 tasks (paper), B=32": (
            np.array([0.46, 0.11, 0.43]),
            np.array([0.30, 0.15, 0.70]),
            32,
            args.batches,
        ),
        "100 tasks, B=256": (rng.dirichlet(np.ones(100)), rng.uniform(0.0, 0.8, 100), 256, args.batches // 4),
        "100 tasks, B=1024, uniform z, acceptance U[0.2, 0.95]": (
            np.full(100, 0.01),
            1.0 - rng.uniform(0.2, 0.95, 100),
            1024,
            args.batches // 2,
        ),
    }
    for name, (z, rho, b, n) in cases.items():
        floor = float((z / (1 - rho)).sum())
        print(f"\n## {name}; minimum expected prompts generated per prompt used: {floor:.2f}")
        print("| variant | filter rates | TV to z | rounds | generated / used | core ms / batch |")
        print("|---|---|---|---|---|---|")
        for label, variant in VARIANTS.items():
            if b == 1024 and label not in LARGE:
                continue
            for known in (True, False):
                r = run(z, rho, b, variant, known, n)
                print(
                    f"| {label} | {'known' if known else 'estimated'} | {r['tv']:.3f} | {r['rounds']:.2f} | "
                    f"{r['gen_per_used']:.2f} | {r['ms']:.2f} |"
                )
    print("\n## Core overhead at scale (paper planner, estimated rates)")
    print("| K | B | core ms / batch |")
    print("|---|---|---|")
    for k, b in ((9, 256), (1000, 4096)):
        z = rng.dirichlet(np.ones(k))
        rho = rng.uniform(0.0, 0.8, k)
        for label in ("paper Alg. 2 + apportion", "posterior planner (q=0.9)", LARGE[-1]):
            r = run(z, rho, b, VARIANTS[label], False, 20)
            print(f"| {k} | {b} | {r['ms']:.2f} ({label}) |")
    core_table(args.repeats)


if __name__ == "__main__":
    main()
