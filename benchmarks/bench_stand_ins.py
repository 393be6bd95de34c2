"""Bias of the stand-in rollouts of skipped prompts (`Selection.stand_ins`) on a pool with known pass rates.

Each prompt i of a synthetic pool has a fixed pass rate p_i (the policy does not move), drawn so that many groups
of N = 8 come back all-correct or all-wrong; a wrong rollout earns 0.1 (a format reward) with probability 1/2,
else 0. Per prompt the true accuracy is p_i and the true mean reward J_i = p_i + 0.05 (1 - p_i). Every step draws
256 prompts per task with the history skip rule, generates and reports the handed-out ones, and takes the stand-ins
of the skipped ones. After a warm-up of 50 steps, printed per seed and task:

- bias vs truth: mean stand-in reward minus the mean J_i of the skipped prompts, and the stand-ins' accuracy (share
  of rollouts == correct_reward) minus the mean p_i, pooled over the steps (N rollouts per skipped prompt);
- bias vs estimate: the same against the class estimates (`skipped_reward`, `skipped_accuracy`) the stand-ins were
  built from, i.e. what turning an estimate into N rollouts adds;

for the stand-ins as built now (randomized rounding of the correct count) and as built before (`nearest`: round(a
N) correct rollouts, the others fitted to the mean reward unless all N are correct), on the same draws and reports.

    .venv/bin/python benchmarks/bench_stand_ins.py [--seeds 0,1,2,3,4] [--steps 400] [--per-step 256]
"""

from __future__ import annotations

import argparse

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import PromptPool
from mtgrpo_core.prompts.history import SelectionConfig
from mtgrpo_core.prompts.pool import Selection

N = 8
FORMAT = 0.1  # reward of a wrong but well-formatted answer


def pass_rates(rows: int, task: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Task 0 mostly easy, task 1 mostly hard: Beta draws with mass near 0 and 1."""
    a, b = ((3.0, 0.3), (0.4, 1.5))[task % 2]
    return rng.beta(a, b, size=rows)


def nearest(picked: Selection, n: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The stand-ins as built before randomized rounding (correct_reward 1): round(a N) correct rollouts."""
    known = ~np.isnan(picked.skipped_reward)
    reward, accuracy = picked.skipped_reward[known], picked.skipped_accuracy[known]
    correct = np.round(accuracy * n)
    with np.errstate(invalid="ignore", divide="ignore"):
        wrong = np.where(correct < n, (reward * n - correct) / (n - correct), 0.0)
    rollouts = np.where(np.arange(n)[None, :] < correct[:, None], 1.0, wrong[:, None])
    return np.repeat(picked.skipped_tasks[known], n), rollouts.ravel()


def measure(
    seed: int, steps: int, rows: int, warmup: int, per_step: int, old: bool
) -> tuple[NDArray[np.float64], float, float]:
    """(2, 2, K): [vs truth, vs estimate] x [J_k bias, accuracy bias] x task, pooled over steps after warm-up; and
    the lowest and highest stand-in reward (the rewards generated lie in [0, 1])."""
    rng = np.random.default_rng(seed)
    k = 2
    p = np.concatenate([pass_rates(rows, t, rng) for t in range(k)])
    true_j = p + FORMAT * 0.5 * (1.0 - p)
    pool = PromptPool(np.repeat(np.arange(k), rows), ["easy", "hard"], seed, SelectionConfig(filtering="strict"))
    sums = np.zeros((5, k))  # stand-in reward, stand-in correct, true J, true p (per group), groups
    est = np.zeros((2, k))
    low, high = np.inf, -np.inf
    for step in range(steps):
        picked = pool.select([per_step] * k)
        correct = rng.random((picked.rows.size, N)) < p[picked.rows, None]
        rewards = np.where(correct, 1.0, np.where(rng.random(correct.shape) < 0.5, FORMAT, 0.0))
        pool.report(picked.rows, rewards)
        if step < warmup:
            continue
        task, reward = nearest(picked, N) if old else picked.stand_ins(N)
        if reward.size:
            low, high = min(low, float(reward.min())), max(high, float(reward.max()))
        known = ~np.isnan(picked.skipped_reward)
        skipped, skipped_task = picked.skipped[known], picked.skipped_tasks[known]
        sums[0] += np.bincount(task, weights=reward, minlength=k) / N
        sums[1] += np.bincount(task, weights=(reward == 1.0), minlength=k) / N
        sums[2] += np.bincount(skipped_task, weights=true_j[skipped], minlength=k)
        sums[3] += np.bincount(skipped_task, weights=p[skipped], minlength=k)
        sums[4] += np.bincount(skipped_task, minlength=k)
        est[0] += np.bincount(skipped_task, weights=picked.skipped_reward[known], minlength=k)
        est[1] += np.bincount(skipped_task, weights=picked.skipped_accuracy[known], minlength=k)
    groups = sums[4]
    stand = sums[:2] / groups
    return np.stack([stand - sums[2:4] / groups, stand - est / groups]), low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rows", type=int, default=3000, help="prompts per task")
    parser.add_argument("--per-step", type=int, default=256, help="prompts handed out per task and step")
    parser.add_argument("--warmup", type=int, default=50, help="steps left out of the measurement")
    args = parser.parse_args()
    head = "J_k bias vs truth | accuracy bias vs truth | J_k bias vs estimate | accuracy bias vs estimate"
    print(f"| stand-ins | seed | task | {head} |")
    print("|---|---|---|---|---|---|---|")
    for old in (True, False):
        label = "nearest (before)" if old else "randomized (now)"
        biases, low, high = [], np.inf, -np.inf
        for seed in (int(s) for s in args.seeds.split(",")):
            bias, lo, hi = measure(seed, args.steps, args.rows, args.warmup, args.per_step, old)
            low, high = min(low, lo), max(high, hi)
            biases.append(bias)
            for t, name in enumerate(("easy", "hard")):
                row = [bias[0, 0, t], bias[0, 1, t], bias[1, 0, t], bias[1, 1, t]]
                print(f"| {label} | {seed} | {name} | " + " | ".join(f"{x:+.4f}" for x in row) + " |")
        worst = np.abs(np.stack(biases)).max(axis=(0, 3))
        print(
            f"{label}: max |bias| vs truth: J_k {worst[0, 0]:.4f}, accuracy {worst[0, 1]:.4f}; "
            f"vs estimate: J_k {worst[1, 0]:.4f}, accuracy {worst[1, 1]:.4f}; "
            f"stand-in rewards in [{low:.4f}, {high:.4f}]"
        )


if __name__ == "__main__":
    main()
