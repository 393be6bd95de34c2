"""Test helper: a seeded synchronous conversation written down step by step (requests, batches, kept and released
keys, reports, weights), so that a change to the sampler can be checked byte for byte against a recorded run."""

from __future__ import annotations

from typing import Any

import numpy as np

from mtgrpo_core import Controller, TaskSignals

PASS_RATES = np.array([0.15, 0.5, 0.9])


def record(method: str, steps: int = 25, seed: int = 3, **sampler: Any) -> list[dict[str, Any]]:
    """Run `method` on three tasks (B = 12, N = 4) against Bernoulli rewards at fixed pass rates; each step's
    decisions as JSON-native values."""
    ctrl = Controller.from_method(method, 3, 12, 4, seed=seed, **sampler)
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    for _ in range(steps):
        builder = ctrl.begin_step()
        requests = []
        while (request := builder.next_request()) is not None:
            requests.append(request.counts.tolist())
            tasks = np.repeat(np.arange(3), request.counts)
            rewards = (rng.random((tasks.shape[0], 4)) < PASS_RATES[tasks, None]).astype(np.float64)
            builder.report_arrays(tasks, rewards=rewards)
        batch = builder.finish()
        r = batch.report
        mean = np.nan_to_num(r.mean_reward, nan=0.0)
        signals = TaskSignals.build(
            reward=mean, present=r.generated > 0, improvement=0.01 * (1.0 - mean) * (r.realized_counts > 0)
        )
        weights = ctrl.end_step(signals)
        out.append(
            {
                "requests": requests,
                "keys": batch.keys.tolist(),
                "tasks": batch.tasks.tolist(),
                "staleness": None if batch.staleness is None else batch.staleness.tolist(),
                "kept": None if batch.kept is None else batch.kept.tolist(),
                "released": None if batch.released is None else batch.released.tolist(),
                "generated": r.generated.tolist(),
                "accepted": r.accepted.tolist(),
                "targets": r.target_counts.tolist(),
                "weights": weights.tolist(),
            }
        )
    return out


CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "mt-grpo": ("mt-grpo", {}),
    "mt-grpo-paper": ("mt-grpo-paper", {}),
    "dapo": ("dapo", {}),
    "grpo": ("grpo", {}),
    "rps-only-posterior": ("rps-only", {"planner": "posterior"}),
}
