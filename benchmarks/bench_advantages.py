"""Time group advantages with token-level output against the memory-bandwidth floor, in one run.

The floor is a plain copy of a float32 tensor of the output's shape (rows, T). Each measured operation goes from
rewards (and group ids) to the (rows, T) float32 token-level advantages; operations and floors are timed
interleaved, `--repeats` times each, and medians are reported. Two pairs are timed:
- allocating: the function returns a new tensor, against `x.copy()` (also a new tensor);
- into a buffer: the function writes into a preallocated `out`, against `np.copyto(buffer, x)`.
Targets (issue 2): dense within 1.5x of the floor, ragged within 2x.

Usage: .venv/bin/python benchmarks/bench_advantages.py [--repeats 25]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from mtgrpo_core.advantages import group_advantages, ragged_group_advantages, token_level_advantages

T = 1024
SHAPES = ((256, 16), (4096, 16))
TARGETS = {"dense": 1.5, "ragged": 2.0}


def make_batch(prompts: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """Rewards in the paper's {0, 0.1, 1} protocol, right-padded response masks, and a shuffled ragged copy."""
    rng = np.random.default_rng(seed)
    rewards = rng.choice([0.0, 0.1, 1.0], p=[0.3, 0.3, 0.4], size=(prompts, n))
    lengths = rng.integers(1, T + 1, size=prompts * n)
    mask = np.arange(T)[None, :] < lengths[:, None]
    order = rng.permutation(prompts * n)
    return {
        "rewards": rewards,
        "mask": mask,
        "flat_rewards": rewards.reshape(-1)[order],
        "group_ids": np.repeat(np.arange(prompts), n)[order],
        "flat_mask": mask[order],
    }


def naive_loop_advantages(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Per-group Python loop: a dict of members, then unbiased std and eps 1e-6, one rollout at a time."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids.tolist()):
        members[g].append(i)
    adv = np.zeros(len(rewards))
    for idx in members.values():
        vals = [float(rewards[i]) for i in idx]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((x - mean) ** 2 for x in vals) / max(len(vals) - 1, 1))
        for i in idx:
            adv[i] = (float(rewards[i]) - mean) / (std + 1e-6)
    return adv


def median_ms(ops: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Run every op once to warm up, then `repeats` interleaved rounds; median milliseconds per op."""
    times: dict[str, list[float]] = {name: [] for name in ops}
    for op in ops.values():
        op()
    for _ in range(repeats):
        for name, op in ops.items():
            start = time.perf_counter()
            op()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_shape(prompts: int, n: int, repeats: int) -> list[tuple[str, float, float, str]]:
    b = make_batch(prompts, n, seed=prompts)
    source = np.ones(b["mask"].shape, dtype=np.float32)
    buffer = np.empty_like(source)

    def dense(out: np.ndarray | None = None) -> np.ndarray:
        return token_level_advantages(group_advantages(b["rewards"]).reshape(-1), b["mask"], out=out)

    def ragged(out: np.ndarray | None = None) -> np.ndarray:
        adv = ragged_group_advantages(b["flat_rewards"], b["group_ids"])
        return token_level_advantages(adv, b["flat_mask"], out=out)

    ms = median_ms(
        {
            "floor copy": source.copy,
            "dense": dense,
            "ragged": ragged,
            "floor copyto": lambda: np.copyto(buffer, source),
            "dense out": lambda: dense(buffer),
            "ragged out": lambda: ragged(buffer),
            "dense seq only": lambda: group_advantages(b["rewards"]),
            "ragged seq only": lambda: ragged_group_advantages(b["flat_rewards"], b["group_ids"]),
        },
        repeats,
    )
    rows = []
    for layout in ("dense", "ragged"):
        for suffix, floor in (("", "floor copy"), (" out", "floor copyto")):
            ratio = ms[layout + suffix] / ms[floor]
            verdict = "met" if ratio <= TARGETS[layout] else "MISSED"
            label = f"{layout} ({'into buffer' if suffix else 'allocating'})"
            rows.append((label, ms[layout + suffix], ratio, f"{verdict} (<= {TARGETS[layout]}x)"))
        rows.append((f"{layout} sequence level only", ms[f"{layout} seq only"], float("nan"), ""))
    rows.append(("floor: x.copy()", ms["floor copy"], 1.0, ""))
    rows.append(("floor: np.copyto(buffer, x)", ms["floor copyto"], 1.0, ""))
    if prompts == 256:
        loop = median_ms(
            {
                "seq": lambda: naive_loop_advantages(b["flat_rewards"], b["group_ids"]),
                "all": lambda: (
                    naive_loop_advantages(b["flat_rewards"], b["group_ids"]).astype(np.float32)[:, None]
                    * b["flat_mask"]
                ),
            },
            5,
        )
        rows.append(("naive loop + token product", loop["all"], loop["all"] / ms["floor copy"], ""))
        rows.append(("naive loop sequence level only", loop["seq"], float("nan"), ""))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25, help="timed rounds per operation (median reported)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    print(
        f"numpy {np.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
        f"T={T}, output float32, bool response mask, GRPO (unbiased std, eps 1e-6), {args.repeats} repeats"
    )
    for prompts, n in SHAPES:
        print(f"\n{prompts} x {n} rollouts x {T} tokens ({prompts * n * T * 4 / 2**20:.0f} MiB output)")
        print(f"{'operation':<34}{'median ms':>11}{'x floor':>9}  target")
        for label, ms, ratio, verdict in bench_shape(prompts, n, args.repeats):
            shown = "" if math.isnan(ratio) else f"{ratio:.2f}"
            print(f"{label:<34}{ms:>11.2f}{shown:>9}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
