"""Generation from a suite's finite training pool through the core's PromptPool, with optional skipping.

`skip`: "none" (the pool's plain passes), "history" (the core's HistorySkip: prompts last seen uninformative) or
"oracle" (simulator only, an upper bound: pass over a prompt whose group the current policy makes more likely
uninformative than informative, q < 1/2, the Bayes decision from each prompt's true success probability).
Every skipped prompt adds its true informative probability q at that moment to the skip error of its task: the
expected share of skipped prompts that would in fact have been informative. Skipped prompts also count in J_k and
accuracy as stand-in rollouts, booked by the pool (`PromptPool.take`: the class estimate from retries, or for the
oracle a group at its true expectation); `stand_ins=False` is the ablation that leaves them out.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_backends.simulated.policy import Groups, SimulatedPolicy
from mtgrpo_core.prompts.history import PromptHistory, SelectionConfig
from mtgrpo_core.prompts.pool import PromptPool

Skip = Literal["none", "history", "oracle"]
SKIPS: tuple[str, ...] = ("none", "history", "oracle")


class OracleSkip:
    """The oracle's SkipRule: pass over rows with informative probability q < 1/2 under the current policy; a row
    passed over stands in as a group at its true expected rewards."""

    def __init__(self, policy: SimulatedPolicy, filter: str) -> None:
        self.policy, self.filter = policy, filter

    def skip(
        self, task: int, rows: NDArray[np.int64], uniform: NDArray[np.float64], history: PromptHistory
    ) -> NDArray[np.bool_]:
        return np.asarray(self.policy.informative_probability(rows, self.filter) < 0.5)

    def stand_ins(
        self, rows: NDArray[np.int64], tasks: NDArray[np.int64], group_size: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        return np.repeat(tasks, group_size), self.policy.expected_rewards(rows).ravel()


class PoolFeed:
    """`feed(counts)` takes the rows of a request from the pool (which books the step's stand-ins and counts),
    generates their groups and reports their outcomes to the pool's history; over the run it sums per task the
    rows handed out, retried, skipped and the skip error."""

    def __init__(
        self,
        policy: SimulatedPolicy,
        names: list[str],
        seed: int,
        skip: Skip,
        selection: SelectionConfig,
        stand_ins: bool = True,
    ) -> None:
        self.policy, self.filter = policy, selection.filtering
        if skip == "none":
            self.pool = PromptPool(policy.pool_task, names, seed)
        elif skip == "history":
            self.pool = PromptPool(policy.pool_task, names, seed, selection)
        else:
            oracle = OracleSkip(policy, selection.filtering)
            self.pool = PromptPool(policy.pool_task, names, seed, replace(selection, max_skips=None), oracle)
        k = len(names)
        self.handed, self.retried, self.skipped, self.flipped = (np.zeros(k, dtype=np.int64) for _ in range(4))
        self.skip_error = np.zeros(k)  # sum of q over skipped rows
        self.oracle, self.use_stand_ins = skip == "oracle", stand_ins

    def __call__(self, counts: ArrayLike) -> Groups:
        picked = self.pool.take(counts, self.policy.group_size)
        if picked.skipped.size:  # q under the policy that passed them over
            q = self.policy.informative_probability(picked.skipped, self.filter)
            self.skip_error += np.bincount(picked.skipped_tasks, weights=q, minlength=self.skip_error.size)
        groups = self.policy.generate_rows(picked.rows)
        if self.pool.history is not None and len(groups):
            self.pool.report(groups.prompt, groups.rewards)
        return groups

    def stand_ins(self) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """(task, reward) of the stand-in rollouts of every prompt skipped this step (the pool's `end_step`), whose
        counts join the run's totals (the oracle does not skip by history: it retries nothing)."""
        drawn = self.pool.end_step()
        self.handed += drawn.counts["handed_out"]
        self.skipped += drawn.counts["skipped"]
        if not self.oracle:
            self.retried += drawn.counts["retried"]
            self.flipped += drawn.counts["retried_informative"]
        if not self.use_stand_ins:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return drawn.stand_in_task, drawn.stand_in_reward

    def metrics(self, generated: int, trained: int) -> dict[str, float]:
        """Scalars for the table: prompts generated per prompt trained; with skipping the share of handed-out
        prompts that were retries, skipped prompts per handed-out prompt and the skip error over all tasks."""
        out = {"gen/used": generated / max(trained, 1)}
        if self.pool.history is not None:
            handed = max(int(self.handed.sum()), 1)
            out["retried"] = float(self.retried.sum()) / handed
            out["skipped/out"] = float(self.skipped.sum()) / handed
            skipped = int(self.skipped.sum())
            out["skip error"] = float(self.skip_error.sum()) / skipped if skipped else float("nan")
        return out

    def log(self) -> dict[str, Any]:
        """Per task for results.json: rows handed out, retried, retried that came back informative (the skip error
        as a trainer observes it), skipped, and the true skip error (None: nothing skipped)."""
        error = [float(e / n) if n else None for e, n in zip(self.skip_error, self.skipped, strict=True)]
        return {
            "handed_out": self.handed.tolist(),
            "retried": self.retried.tolist(),
            "retried_informative": self.flipped.tolist(),
            "skipped": self.skipped.tolist(),
            "skip_error": error,
        }
