"""Bookkeeping of one batch conversation: per-task counts and every reported group, in report order.

The ledger records facts and refuses reports that do not match the requests; it decides nothing (the planner and
the selection do). A refused report leaves it unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core.report_keys import KeyArray, KeyLedger


class BatchLedger:
    """Counts per task (requested and not yet reported, generated, accepted, reward sums) and the reported groups.

    Per-task arrays have shape (K,); the reported columns (tasks, keys, informative, rewards (n, N), the caller's
    opaque payloads) grow in report order.
    """

    def __init__(self, num_tasks: int, group_size: int) -> None:
        self.num_tasks = num_tasks
        self.group_size = group_size
        self.pending = np.zeros(num_tasks, dtype=np.int64)
        self.generated = np.zeros(num_tasks, dtype=np.int64)
        self.accepted = np.zeros(num_tasks, dtype=np.int64)
        self._reward_sum = np.zeros(num_tasks)
        self._reward_n = np.zeros(num_tasks, dtype=np.int64)
        self._tasks: list[NDArray[np.int64]] = []
        self._keys = KeyLedger()
        self._rewards: list[NDArray[np.float64] | None] = []
        self._informative: list[NDArray[np.bool_]] = []
        self._accepted: list[NDArray[np.bool_]] = []
        self._carried: list[NDArray[np.bool_]] = []
        self._payloads: list[tuple[Any, ...] | None] = []

    def requested(self, counts: NDArray[np.int64]) -> None:
        """Book a request of counts[k] groups of task k."""
        self.pending += counts
        self.generated += counts

    def require_reported(self, before: str) -> None:
        """Refuse to go on while requested groups are not reported yet."""
        if self.pending.any():
            raise ValueError(
                f"{int(self.pending.sum())} requested groups are not reported yet (per task: "
                f"{self.pending.tolist()}); report every requested group before {before}"
            )

    def check_keys(self, keys: Any) -> KeyArray:
        """`keys` validated against each other and every earlier key (see report_keys); nothing is stored yet."""
        return self._keys.add("keys", keys)

    def record(
        self,
        tasks: NDArray[np.int64],
        keys: KeyArray,
        rewards: NDArray[np.float64] | None,
        informative: NDArray[np.bool_],
        accepted: NDArray[np.bool_],
        payloads: tuple[Any, ...] | None = None,
    ) -> None:
        """Store one validated report whole, or refuse it (a group never requested, or reported twice)."""
        per_task = np.bincount(tasks, minlength=self.num_tasks)
        over = per_task > self.pending
        if over.any():
            k = int(np.argmax(over))
            raise ValueError(
                f"tasks holds {int(per_task[k])} groups of task {k} but only {int(self.pending[k])} were requested "
                "and not yet reported; expected each requested group reported once (a group never requested, or "
                "reported twice)"
            )
        self.pending -= per_task
        self._append(tasks, keys, rewards, informative, accepted, payloads, carried=False)
        if rewards is not None:
            self._reward_sum += np.bincount(tasks, weights=rewards.sum(axis=1), minlength=self.num_tasks)
            self._reward_n += per_task * self.group_size

    def record_carried(
        self,
        tasks: NDArray[np.int64],
        keys: KeyArray,
        rewards: NDArray[np.float64] | None,
        payloads: tuple[Any, ...] | None = None,
    ) -> None:
        """Book informative groups kept from earlier steps: accepted, but neither generated nor reported this step
        (J_k counts this step's rollouts only)."""
        ones = np.ones(tasks.shape[0], dtype=np.bool_)
        self._append(tasks, self._keys.add("carried keys", keys), rewards, ones, ones, payloads, carried=True)

    def _append(
        self,
        tasks: NDArray[np.int64],
        keys: KeyArray,
        rewards: NDArray[np.float64] | None,
        informative: NDArray[np.bool_],
        accepted: NDArray[np.bool_],
        payloads: tuple[Any, ...] | None,
        carried: bool,
    ) -> None:
        self._tasks.append(tasks)
        self._payloads.append(payloads)
        self._keys.commit(keys)
        self._rewards.append(rewards)
        self._informative.append(informative)
        self._accepted.append(accepted)
        self._carried.append(np.full(tasks.shape[0], carried))
        self.accepted += np.bincount(tasks[accepted], minlength=self.num_tasks)

    # -- the reported columns, in report order ----------------------------------------------------------------
    def carried(self) -> NDArray[np.bool_]:
        """True at groups kept from an earlier step (booked before this step's reports)."""
        return np.concatenate(self._carried) if self._carried else np.zeros(0, dtype=np.bool_)

    def tasks(self) -> NDArray[np.int64]:
        return np.concatenate(self._tasks) if self._tasks else np.zeros(0, dtype=np.int64)

    def informative(self) -> NDArray[np.bool_]:
        return np.concatenate(self._informative) if self._informative else np.zeros(0, dtype=np.bool_)

    def accepted_positions(self) -> NDArray[np.int64]:
        """Report positions of the groups eligible for the batch, ascending."""
        return np.flatnonzero(np.concatenate(self._accepted)) if self._accepted else np.zeros(0, dtype=np.int64)

    def rewards(self, idx: NDArray[np.int64]) -> NDArray[np.float64] | None:
        """Rewards (len(idx), N) of the groups at idx, or None if any report came without rewards."""
        if not self._rewards or any(r is None for r in self._rewards):
            return None
        return np.concatenate([r for r in self._rewards if r is not None])[idx]

    def fresh_rollouts(self) -> tuple[NDArray[np.int64], NDArray[np.float64]] | None:
        """Task (n N,) and reward (n N,) of every rollout reported this step (carried groups excluded), in report
        order; None if a report came without rewards."""
        fresh = [(t, r) for t, r, c in zip(self._tasks, self._rewards, self._carried, strict=True) if not c.any()]
        if any(r is None for _, r in fresh):
            return None
        task = [np.repeat(t, self.group_size) for t, _ in fresh]
        reward = [r.ravel() for _, r in fresh if r is not None]
        return (
            np.concatenate(task) if task else np.zeros(0, dtype=np.int64),
            np.concatenate(reward) if reward else np.zeros(0),
        )

    def payloads(self, idx: NDArray[np.int64]) -> tuple[Any, ...] | None:
        """The caller's payloads of the groups at idx (None for a group reported without one), or None if no
        report carried payloads."""
        if all(p is None for p in self._payloads):
            return None
        flat = [x for t, p in zip(self._tasks, self._payloads, strict=True) for x in (p or (None,) * t.shape[0])]
        return tuple(flat[int(i)] for i in idx)

    def keys(self, idx: NDArray[np.int64]) -> KeyArray:
        return self._keys.take(idx)

    def mean_reward(self) -> NDArray[np.float64]:
        """Mean reward of every reported rollout per task (NaN where none was reported with rewards)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean: NDArray[np.float64] = np.where(
                self._reward_n > 0, self._reward_sum / np.maximum(self._reward_n, 1), np.nan
            )
        return mean
