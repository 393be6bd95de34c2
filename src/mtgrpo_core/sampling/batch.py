"""What a batch conversation hands out (a `Request` per round, at the end a `Batch` with its `BatchReport`), its
bookkeeping (`BatchLedger`) and the caller-side keys it books.

The ledger records per-task counts and every reported group, in report order; it decides nothing (the planner
and the selection do) and refuses reports that do not match the requests; a refused report leaves it unchanged.

Keys: integers only, returned exactly as reported, duplicates refused. Key dtype rule. A numpy integer array keeps
its dtype; a sequence of Python (or numpy) ints becomes int64, or uint64 when a key exceeds 2**63 - 1 and none is
negative. The keys of one batch come back in numpy's promotion of the reported dtypes (uint8 and int8 reports give
int16), so every key comes back with its exact value. Where numpy's promotion would leave the integers (a signed
dtype with uint64 promotes to float64), the batch keeps int64 if every key fits in it, else uint64 if no key is
negative; a batch holding both a negative key and a key >= 2**63 fits no numpy integer dtype and is refused.
Booleans, floats, strings and other objects are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v

KeyArray = NDArray[np.integer[Any]]

_INT64 = np.iinfo(np.int64)
_UINT64 = np.iinfo(np.uint64)
_EXPECTED = "integers (a numpy integer array, or a sequence of Python ints within int64 or uint64)"


def as_key_array(name: str, keys: Any) -> KeyArray:
    """`keys` as a 1-D numpy integer array holding exactly the reported values (see the module's dtype rule)."""
    if hasattr(keys, "__array__"):  # numpy arrays (and array-likes such as tensors) keep their integer dtype
        arr = np.asarray(keys)
        if arr.ndim != 1:
            raise ValueError(f"{name} must have 1 dimension(s), got shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.integer):
            return arr
        if arr.size and arr.dtype != object:
            raise TypeError(f"{name} must hold {_EXPECTED}, got dtype {arr.dtype} (first key {arr[0]!r})")
        keys = arr.tolist()
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise TypeError(f"{name} must be a 1-D sequence of {_EXPECTED}, got {v._show(keys)}")
    items = list(keys)
    for i, key in enumerate(items):
        if isinstance(key, bool | np.bool_) or not isinstance(key, int | np.integer):
            raise TypeError(f"{name} must hold {_EXPECTED}, got {key!r} of type {type(key).__name__} at index {i}")
    if not items:
        return np.zeros(0, dtype=np.int64)
    low, high = int(min(items)), int(max(items))
    if low < _INT64.min or high > _UINT64.max:
        bad = low if low < _INT64.min else high
        raise ValueError(f"{name} holds {bad}, outside every numpy integer dtype; expected {_EXPECTED}")
    if high <= _INT64.max:
        return np.array(items, dtype=np.int64)
    if low >= 0:
        return np.array([int(k) for k in items], dtype=np.uint64)
    raise ValueError(_mix_message(name, low, high))


def _mix_message(name: str, negative: int, large: int) -> str:
    return (
        f"{name} mixes the negative key {negative} with the key {large} >= 2**63 in one batch; no numpy integer "
        "dtype holds both: expected keys that all fit in int64 or all fit in uint64"
    )


def common_key_dtype(name: str, a: KeyArray, b: KeyArray) -> np.dtype[Any]:
    """The dtype that holds every key of a and b exactly (the module's rule), or a ValueError naming both keys."""
    dtype = np.promote_types(a.dtype, b.dtype)
    if np.issubdtype(dtype, np.integer):
        return dtype
    unsigned, signed = (a, b) if a.dtype == np.uint64 else (b, a)  # numpy leaves the integers only with uint64
    if unsigned.size == 0 or int(unsigned.max()) <= _INT64.max:
        return np.dtype(np.int64)
    if signed.size == 0 or int(signed.min()) >= 0:
        return np.dtype(np.uint64)
    raise ValueError(_mix_message(name, int(signed.min()), int(unsigned.max())))


def in_sorted(seen: KeyArray, keys: KeyArray) -> NDArray[np.bool_]:
    """Which of `keys` occur in `seen` (sorted ascending; both of one integer dtype)."""
    pos = np.searchsorted(seen, keys)
    hit: NDArray[np.bool_] = pos < seen.shape[0]
    hit[hit] = seen[pos[hit]] == keys[hit]
    return hit


class KeyLedger:
    """Integer keys of one batch in report order; duplicates are found with sorted arrays, not a Python set."""

    def __init__(self) -> None:
        self._chunks: list[KeyArray] = []
        self._sorted: KeyArray | None = None  # None until the first non-empty report fixes a dtype
        self._all: KeyArray | None = None  # the chunks joined in the key dtype, until the next commit

    @property
    def dtype(self) -> np.dtype[Any]:
        """The dtype the batch's keys come back in (int64 while nothing has been reported)."""
        return np.dtype(np.int64) if self._sorted is None else self._sorted.dtype

    def add(self, name: str, keys: Any) -> KeyArray:
        """Validate new keys against each other and all earlier ones; return them as an array (not yet stored)."""
        arr = as_key_array(name, keys)
        if arr.size == 0 or self._sorted is None:
            fresh = arr
            dtype = arr.dtype
            seen = np.zeros(0, dtype=dtype)
        else:
            dtype = common_key_dtype(name, self._sorted, arr)
            fresh = arr.astype(dtype)
            seen = self._sorted.astype(dtype)
        ordered = np.sort(fresh)
        if (ordered[1:] == ordered[:-1]).any() or in_sorted(seen, ordered).any():
            self._raise_duplicate(name, fresh.tolist(), set(seen.tolist()))
        return fresh

    def commit(self, arr: KeyArray) -> None:
        """Store keys returned by `add` once the whole report has been accepted."""
        if arr.size == 0:
            return
        self._chunks.append(arr)
        self._all = None
        if self._sorted is None:
            self._sorted = np.sort(arr)
        else:
            self._sorted = np.sort(np.concatenate((self._sorted.astype(arr.dtype), arr)))

    def all(self) -> KeyArray:
        """Every key in report order, in the batch's key dtype (joined once per commit; index it, do not write)."""
        if self._all is None:
            dtype = self.dtype
            self._all = np.concatenate([c.astype(dtype) for c in self._chunks]) if self._chunks else np.zeros(0, dtype)
        return self._all

    def take(self, idx: NDArray[np.int64]) -> KeyArray:
        """Keys at report positions idx, in the batch's key dtype."""
        return self.all()[idx]

    @staticmethod
    def _raise_duplicate(name: str, items: list[int], seen: set[int]) -> None:
        local: set[int] = set()
        for key in items:
            if key in seen or key in local:
                raise ValueError(f"{name} holds {key!r}, reported twice in this batch; expected keys unique per batch")
            local.add(key)


@dataclass(frozen=True)
class Request:
    """Prompts to generate now: counts[k] prompts of task k (N rollouts each). round 0 is the first request."""

    counts: NDArray[np.int64]
    round: int
    version: int = 0  # the step whose policy generates them (an ahead request's is older than the step training them)

    @property
    def total(self) -> int:
        return int(self.counts.sum())


@dataclass(frozen=True)
class BatchReport:
    """What one batch conversation did. Arrays have one entry per task.

    target_counts: n, post-filter counts the batch aims for. realized_counts: groups of each task in the batch.
    rounds: generation rounds used (1 = the first request sufficed). generated / informative / accepted: groups
    generated, found informative by the filter, and eligible for the batch. surplus: accepted but not used.
    budget_exhausted: the round budget or the generation cap ended the conversation before the batch was complete
    (fewer than B groups, or under ratio_constraint a task below its target). capped: the generation cap cut a
    request this step (`SamplerConfig.generation_cap`). short_tasks: tasks whose realized count is below target.
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
    capped: bool = False

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
        self._staleness: list[NDArray[np.int64]] = []
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
        staleness: int = 0,
    ) -> None:
        """Store one validated report whole, or refuse it (a group never requested, or reported twice). staleness
        > 0: groups of an earlier step's ahead request (checked against it by the caller), generated by then and
        counted as generated now."""
        per_task = np.bincount(tasks, minlength=self.num_tasks)
        over = per_task > self.pending
        if staleness == 0 and over.any():
            k = int(np.argmax(over))
            raise ValueError(
                f"tasks holds {int(per_task[k])} groups of task {k} but only {int(self.pending[k])} were requested "
                "and not yet reported; expected each requested group reported once (a group never requested, or "
                "reported twice)"
            )
        if staleness == 0:
            self.pending -= per_task
        else:
            self.generated += per_task
        self._append(tasks, keys, rewards, informative, accepted, payloads, np.full(tasks.shape[0], staleness))
        if rewards is not None:
            self._reward_sum += np.bincount(tasks, weights=rewards.sum(axis=1), minlength=self.num_tasks)
            self._reward_n += per_task * self.group_size

    def record_carried(
        self,
        tasks: NDArray[np.int64],
        keys: KeyArray,
        rewards: NDArray[np.float64] | None,
        payloads: tuple[Any, ...] | None,
        staleness: NDArray[np.int64],
    ) -> None:
        """Book informative groups kept from earlier steps (staleness >= 1 each): accepted, but neither generated nor
        reported this step (J_k counts this step's rollouts only). Their keys are the pool's: distinct integers,
        booked before any report, so not checked again."""
        ones = np.ones(tasks.shape[0], dtype=np.bool_)
        self._append(tasks, keys, rewards, ones, ones, payloads, staleness, carried=True)

    def _append(
        self,
        tasks: NDArray[np.int64],
        keys: KeyArray,
        rewards: NDArray[np.float64] | None,
        informative: NDArray[np.bool_],
        accepted: NDArray[np.bool_],
        payloads: tuple[Any, ...] | None,
        staleness: NDArray[np.int64],
        carried: bool = False,
    ) -> None:
        self._tasks.append(tasks)
        self._staleness.append(staleness)
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

    def staleness(self) -> NDArray[np.int64]:
        """Steps since each group was generated (0: this step's requests)."""
        return np.concatenate(self._staleness) if self._staleness else np.zeros(0, dtype=np.int64)

    def tasks(self) -> NDArray[np.int64]:
        return np.concatenate(self._tasks) if self._tasks else np.zeros(0, dtype=np.int64)

    def informative(self) -> NDArray[np.bool_]:
        return np.concatenate(self._informative) if self._informative else np.zeros(0, dtype=np.bool_)

    def accepted_positions(self) -> NDArray[np.int64]:
        """Report positions of the groups eligible for the batch, ascending."""
        return np.flatnonzero(np.concatenate(self._accepted)) if self._accepted else np.zeros(0, dtype=np.int64)

    def rewards(self) -> NDArray[np.float64] | None:
        """Rewards (n, N) of every reported group, or None if any report came without rewards."""
        if not self._rewards or any(r is None for r in self._rewards):
            return None
        return np.concatenate([r for r in self._rewards if r is not None])

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

    def keys(self) -> KeyArray:
        """Every reported key, in the batch's key dtype (see the module's rule)."""
        return self._keys.all()

    def mean_reward(self) -> NDArray[np.float64]:
        """Mean reward of every reported rollout per task (NaN where none was reported with rewards)."""
        n = self._reward_n
        mean: NDArray[np.float64] = np.where(n > 0, self._reward_sum / np.maximum(n, 1), np.nan)  # never / 0
        return mean
