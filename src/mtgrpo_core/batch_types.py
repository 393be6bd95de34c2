"""What a batch conversation hands out: a `Request` per round, and at the end a `Batch` with its `BatchReport`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core.report_keys import KeyArray


@dataclass(frozen=True)
class Request:
    """Prompts to generate now: counts[k] prompts of task k (N rollouts each). round 0 is the first request."""

    counts: NDArray[np.int64]
    round: int

    @property
    def total(self) -> int:
        return int(self.counts.sum())


@dataclass(frozen=True)
class BatchReport:
    """What one batch conversation did. Arrays have one entry per task.

    target_counts: n, post-filter counts the batch aims for. realized_counts: groups of each task in the batch.
    rounds: generation rounds used (1 = the first request sufficed). generated / informative / accepted: groups
    generated, found informative by the filter, and eligible for the batch. surplus: accepted but not used.
    budget_exhausted: the round budget ended the conversation before the batch was complete (fewer than B groups,
    or under ratio_constraint a task below its target). short_tasks: tasks whose realized count is below target.
    mean_reward: mean reward of ALL reported rollouts of each task (J_k before filtering; NaN if none or if
    groups were reported without rewards).
    weights: the weights the sampler aimed at (the rule's z, with barren tasks at 0 when the no-signal guard
    acts). barren_tasks: tasks the guard sampled only by probes this step (`no_signal_guard`).
    carried_counts: groups of each task in the batch that were kept from an earlier step (`carry_pool`; they are
    in `accepted` and `realized_counts`, not in `generated` or `informative`). kept_counts: groups kept for later.
    """

    weights: NDArray[np.float64]
    target_counts: NDArray[np.int64]
    realized_counts: NDArray[np.int64]
    rounds: int
    generated: NDArray[np.int64]
    informative: NDArray[np.int64]
    accepted: NDArray[np.int64]
    surplus: NDArray[np.int64]
    budget_exhausted: bool
    short_tasks: tuple[int, ...]
    mean_reward: NDArray[np.float64]
    barren_tasks: tuple[int, ...] = ()
    carried_counts: NDArray[np.int64] | None = None
    kept_counts: NDArray[np.int64] | None = None

    @property
    def realized_shares(self) -> NDArray[np.float64]:
        total = self.realized_counts.sum()
        return self.realized_counts / total if total else np.zeros_like(self.weights)


@dataclass(frozen=True)
class Batch:
    """The groups that form the training batch, in report order, and the conversation's report.

    keys: exactly as reported, in the batch's key dtype (see `report_keys`). rewards: (len, N), or None if any
    report came without rewards. staleness: (len,) steps since each group was generated (0: this step; > 0: kept
    from an earlier step: train it with the importance ratio against the policy that generated it).
    kept: keys of groups the sampler keeps for later steps (it holds their payloads; a trainer that reports
    without payloads keeps their data and log-probabilities itself).
    released: keys of this step's groups (and expired kept ones) that the trainer may free now.
    payloads, released_payloads: the payloads reported with the groups of `keys` and of `released`, in the same
    order (None where no report carried payloads; a group reported without one has None).
    """

    tasks: NDArray[np.int64]
    keys: KeyArray
    rewards: NDArray[np.float64] | None
    report: BatchReport
    staleness: NDArray[np.int64] | None = None
    kept: KeyArray | None = None
    released: KeyArray | None = None
    payloads: tuple[Any, ...] | None = None
    released_payloads: tuple[Any, ...] | None = None

    def __len__(self) -> int:
        return int(self.tasks.shape[0])
