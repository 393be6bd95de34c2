"""How often a task is left out of the weight update (absent from the signals the rule receives), per task, for
the lean default (carry-over 1) on the simulator, by cause. A task whose batch share comes only from carried groups
has no fresh rollout; before Controller.end_step kept such tasks in the update they dropped out (docs/signals.md).
A task whose weight gives it no group at all (target 0) has neither rollouts nor trained samples.

    .venv/bin/python benchmarks/bench_carried_signal.py --suites paper3,paper9 --seeds 0,1,2,3,4

Prints, per suite and cause, the share of steps in which each task was left out (mean over seeds).
"""

from __future__ import annotations

import argparse

import numpy as np

from mtgrpo_backends.simulated.bench import step_facts
from mtgrpo_backends.simulated.policy import Groups
from mtgrpo_backends.simulated.suites import load_suite
from mtgrpo_core import Controller


def left_out(suite_name: str, method: str, seed: int, steps: int | None) -> np.ndarray:
    """(3, K): per task, the share of steps whose weight update left the task out: trained only from carried
    groups, given no group (target 0), any other cause."""
    suite = load_suite(suite_name)
    d = suite.defaults
    k, n, t = suite.num_tasks, d.group_size, steps or d.steps
    ctrl = Controller.from_method(method, k, d.batch_size, n, seed, max_rounds=d.max_rounds)
    policy = suite.policy(seed, n)
    kept, kept_keys, next_key = Groups.empty(n), np.zeros(0, dtype=np.int64), 0
    out = np.zeros((3, k))
    for _ in range(t):
        builder = ctrl.begin_step()
        parts, first = [], next_key
        while (request := builder.next_request()) is not None:
            g = policy.generate(request.counts)
            builder.report_arrays(g.task, np.arange(next_key, next_key + len(g)), rewards=g.rewards)
            parts.append(g)
            next_key += len(g)
        batch = builder.finish()
        generated = Groups.concat(parts) if parts else Groups.empty(n)
        pool = Groups.concat([kept, generated])
        pool_keys = np.concatenate([kept_keys, np.arange(first, next_key)])
        trained = pool.take(np.searchsorted(pool_keys, np.asarray(batch.keys, dtype=np.int64)))
        facts = step_facts(generated.rollouts(), trained, *policy.train_step(trained))
        if hasattr(ctrl, "last_signals"):  # this version: the controller computes and applies the signals
            ctrl.end_step(facts)
            present = ctrl.last_signals.present
        else:  # before: the trainer computed them (no task without fresh rollouts could take part)
            from mtgrpo_core import step_signals

            signals = step_signals(facts, k)
            barren = ctrl.sampler.guard.barren.copy() if ctrl.sampler.guard is not None else np.zeros(k, bool)
            ctrl.end_step(signals)
            present = signals.present & ~barren
        trained = batch.report.realized_counts > 0
        fresh = batch.report.generated > 0
        out[0] += ~present & trained & ~fresh
        out[1] += ~present & ~trained & (batch.report.target_counts == 0)
        out[2] += ~present & ~(trained & ~fresh) & (batch.report.target_counts > 0)
        kept_keys = np.asarray(batch.kept, dtype=np.int64) if batch.kept is not None else np.zeros(0, np.int64)
        kept = pool.take(np.searchsorted(pool_keys, kept_keys))
    return out / t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default="paper3,paper9")
    parser.add_argument("--method", default="mt-grpo:0.2")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the suite's)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.suites.split(","):
        shares = np.mean([left_out(name, args.method, s, args.steps) for s in seeds], axis=0)
        for cause, row in zip(("carried only", "no group", "other"), shares, strict=True):
            per_task = np.array2string(100 * row, precision=1, separator=", ")
            print(f"{name} seeds {args.seeds}, {cause}: {per_task} % of steps (largest {100 * row.max():.1f} %)")


if __name__ == "__main__":
    main()
