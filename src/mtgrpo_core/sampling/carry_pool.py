"""Carry-over (beyond the paper): informative groups generated but not needed are kept for the next steps.

Any planner that throws informative surplus away pays for it: the paper's 3-task case cannot go below about 2.5
prompts generated per prompt used without many rounds. Keeping the surplus for at most `max_staleness` later
steps (trained then with the clipped importance ratio against the policy that generated it) lets the next batch
start from it. The sampler offers the kept groups at the start of each conversation, before any request; the
batch says which of its groups are carried (and how stale), which groups it keeps, and which the trainer may free.
With carry-over on, keys must be unique across steps: the pool remembers the keys the last step retired (trained
or released) and refuses a later report of any of them (the trainer's data for them may be gone).

The pool also holds each kept group's payload, the trainer's own handle on its data (rows, tensors, TransferQueue
keys), so no trainer keeps a store of its own. Payloads are opaque and stay out of the JSON state: a trainer that
checkpoints saves `payloads()` with its own tensors and hands them back to `load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.advantages import zero_gradient_mask
from mtgrpo_core.sampling.batch import KeyArray, common_key_dtype, in_sorted


@dataclass(frozen=True)
class CarriedGroups:
    """Groups kept from earlier steps: task (n,), key (n,), rewards (n, N) or None, staleness (n,) >= 1 (steps
    since they were generated, as of the step that offers them)."""

    tasks: NDArray[np.int64]
    keys: KeyArray
    rewards: NDArray[np.float64] | None
    staleness: NDArray[np.int64]
    payloads: tuple[Any, ...] | None = None  # the trainer's payload of each group (None: reported without)

    def __len__(self) -> int:
        return int(self.tasks.shape[0])


class CarryPool:
    """The kept groups between steps; explicit, JSON-native state.

    group_size, filtering, correct_reward: the sampler's N and filter, against which a loaded state's rewards are
    checked (width N, every kept group informative); group_size None (a pool used without a sampler) checks only
    that the rewards are a table.
    """

    KIND = "carry_pool"

    def __init__(
        self,
        num_tasks: int,
        max_staleness: int,
        *,
        group_size: int | None = None,
        filtering: str = "lenient",
        correct_reward: float = 1.0,
    ) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self.max_staleness = v.positive_int("max_staleness", max_staleness)
        self.group_size = None if group_size is None else v.positive_int("group_size", group_size)
        self.filtering = v.choice("filtering", filtering, ("none", "lenient", "strict"))
        self.correct_reward = v.real_in_range("correct_reward", correct_reward)
        self._groups = CarriedGroups(np.zeros(0, np.int64), np.zeros(0, np.int64), None, np.zeros(0, np.int64))
        self._retired: KeyArray = np.zeros(0, np.int64)
        self._retired_sorted: KeyArray = self._retired

    def refuse_retired(self, keys: KeyArray) -> None:
        """Refuse keys that the last step trained or released (a group reported again after it was retired)."""
        if self._retired.size == 0 or keys.size == 0:
            return
        try:  # compare as integers of one dtype; a batch that mixes negative and >= 2**63 keys compares Python ints
            dtype = common_key_dtype("keys", keys, self._retired)
            again = keys[in_sorted(self._retired_sorted.astype(dtype), keys.astype(dtype))].tolist()
        except ValueError:
            retired = set(self._retired.tolist())
            again = [k for k in keys.tolist() if k in retired]
        if again:
            raise ValueError(
                f"keys {again[:5]} were trained or released at the last step and are reported again; with "
                "carry-over every reported group needs a key never used before (e.g. a counter across steps)"
            )

    def offer(self) -> CarriedGroups:
        """The groups kept for the coming step (each one step staler than when stored)."""
        return self._groups

    def store(
        self,
        tasks: NDArray[np.int64],
        keys: KeyArray,
        rewards: NDArray[np.float64] | None,
        staleness: NDArray[np.int64],
        retired: KeyArray,
        payloads: tuple[Any, ...] | None = None,
    ) -> NDArray[np.bool_]:
        """Keep the groups whose staleness at the next step (staleness + 1) is within the bound; replaces what was
        kept, and remembers `retired` (the step's keys not kept) plus the groups dropped here. Returns the mask of
        the groups kept."""
        keep = staleness + 1 <= self.max_staleness
        held = None if payloads is None else tuple(p for p, k in zip(payloads, keep.tolist(), strict=True) if k)
        self._groups = CarriedGroups(
            tasks[keep], keys[keep], None if rewards is None else rewards[keep], staleness[keep] + 1, held
        )
        self._retire(np.concatenate([retired, keys[~keep]]) if (~keep).any() else retired)
        return keep

    def release(self) -> dict[int, Any]:
        """Forget every kept group (a trainer that lost their data); their keys stay retired. Returns their
        payloads by key."""
        released = self.payloads()
        g = self._groups
        if len(g):
            dtype = common_key_dtype("keys", self._retired, g.keys)
            self._retire(np.concatenate([self._retired.astype(dtype), g.keys.astype(dtype)]))
        self._groups = CarriedGroups(np.zeros(0, np.int64), np.zeros(0, np.int64), None, np.zeros(0, np.int64))
        return released

    def payloads(self) -> dict[int, Any]:
        """The kept groups' payloads by key (empty if they were reported without): what a checkpoint saves beside
        the JSON state, to hand back to `load_state_dict`."""
        g = self._groups
        return {} if g.payloads is None else dict(zip(g.keys.tolist(), g.payloads, strict=True))

    def state_dict(self) -> dict[str, Any]:
        g = self._groups
        return {
            "kind": self.KIND,
            "num_tasks": self._k,
            "max_staleness": self.max_staleness,
            "tasks": g.tasks.tolist(),
            "keys": g.keys.tolist(),
            "key_dtype": str(g.keys.dtype),
            "rewards": None if g.rewards is None or len(g) == 0 else g.rewards.tolist(),  # JSON keeps no (0, N)
            "staleness": g.staleness.tolist(),
            "payloads": "held by the trainer" if g.payloads is not None else None,
            "retired": self._retired.tolist(),
            "retired_dtype": str(self._retired.dtype),
        }

    def load_state_dict(self, state: Mapping[str, Any], payloads: Mapping[int, Any] | None = None) -> None:
        """Restore what `state_dict` returned, with the kept groups' `payloads()` when they had payloads. Every
        entry is checked first (integer keys, distinct; staleness in [1, max_staleness]; rewards (groups, N), each
        kept group informative under the filter; a payload for exactly the kept keys) and a refused state changes
        nothing."""
        v.state_matches(state, self.KIND, self._k)
        if state.get("max_staleness") != self.max_staleness:
            raise ValueError(f"state['max_staleness'] is {state.get('max_staleness')!r}, expected {self.max_staleness}")
        tasks = v.task_ids("state['tasks']", state.get("tasks", []), self._k)
        staleness = v.int_array("state['staleness']", state.get("staleness", []), ndim=1)
        keys = _keys(state, "keys", "key_dtype")
        retired = _keys(state, "retired", "retired_dtype")
        rewards = None if state.get("rewards") is None else v.finite_array("state['rewards']", state["rewards"])
        n = tasks.shape[0]
        if n == 0 and rewards is not None and rewards.size == 0:
            rewards = None  # nothing kept (JSON does not keep the shape (0, N)); an empty offer is never booked
        if keys.shape != (n,) or staleness.shape != (n,) or (rewards is not None and rewards.shape[:1] != (n,)):
            rows = "no" if rewards is None else (rewards.shape[0] if rewards.ndim else "a scalar for")
            raise ValueError(
                f"state holds {n} kept groups (state['tasks']) but {keys.shape[0]} keys, {staleness.shape[0]} "
                f"staleness entries and {rows} rows of rewards; expected {n} of each"
            )
        if np.unique(keys).shape[0] != n:
            raise ValueError(f"state['keys'] must be {n} distinct integers, got {keys.tolist()[:8]}")
        if n and (staleness.min() < 1 or staleness.max() > self.max_staleness):
            raise ValueError(f"state['staleness'] must be in [1, {self.max_staleness}], got {staleness.tolist()}")
        if rewards is not None:
            self._check_rewards(rewards)
        held = _held_payloads(state.get("payloads"), keys, payloads)
        self._groups = CarriedGroups(tasks, keys, rewards, staleness, held)
        self._retire(retired)

    def _check_rewards(self, rewards: NDArray[np.float64]) -> None:
        """Refuse kept rewards that are not (groups, N) or hold a group the sampler's filter would not keep."""
        width = "N" if self.group_size is None else f"N = {self.group_size}"
        if rewards.ndim != 2 or (self.group_size is not None and rewards.shape[1] != self.group_size):
            raise ValueError(f"state['rewards'] must have shape (groups, {width}), got {rewards.shape}")
        strict = self.filtering == "strict"
        barren = zero_gradient_mask(rewards, "strict" if strict else "lenient", self.correct_reward)
        if barren.any():
            row = int(np.flatnonzero(barren)[0])
            rule = f"some but not all == correct_reward {self.correct_reward}" if strict else "not all equal"
            raise ValueError(
                f"state['rewards'] row {row} is {rewards[row].tolist()}, a group without signal: only informative "
                f"groups are kept, expected rewards {rule}"
            )

    def _retire(self, keys: KeyArray) -> None:
        self._retired, self._retired_sorted = keys, np.sort(keys)  # exact in any common dtype: it stays sorted


def _held_payloads(marker: Any, keys: KeyArray, payloads: Mapping[int, Any] | None) -> tuple[Any, ...] | None:
    """The payloads of the kept `keys` in their order: from `payloads` when the state says the groups had
    payloads (state['payloads'] is "held by the trainer"), else None; a missing, extra or unexpected one is
    refused."""
    if marker not in (None, "held by the trainer"):
        raise ValueError(f"state['payloads'] is {marker!r}, expected None or 'held by the trainer'")
    if marker is None:
        if payloads:
            raise ValueError(
                f"payloads given for keys {sorted(payloads)[:5]}, but the state's kept groups were reported without"
            )
        return None
    wanted = keys.tolist()
    given = dict(payloads or {})
    missing, extra = sorted(set(wanted) - set(given)), sorted(set(given) - set(wanted))
    if missing or extra:
        raise ValueError(
            f"the state keeps {len(wanted)} groups with payloads held by the trainer: pass the payload of each kept "
            f"key (Controller.kept_payloads() when saving); missing keys {missing[:5]}, unexpected keys {extra[:5]}"
        )
    return tuple(given[k] for k in wanted)


def _keys(state: Mapping[str, Any], name: str, dtype_name: str) -> KeyArray:
    """state[name] as an array of state[dtype_name], an integer dtype; every entry must be an int (a float such as
    3.0 or 3.5, a bool or a string is refused, not truncated)."""
    raw, dtype_value = state.get(name, []), state.get(dtype_name, "int64")
    try:
        dtype = np.dtype(dtype_value)
    except TypeError as err:
        raise ValueError(f"state[{dtype_name!r}] is {dtype_value!r}, expected a numpy integer dtype name") from err
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"state[{dtype_name!r}] is {dtype_value!r}, expected a numpy integer dtype name")
    items = raw.tolist() if isinstance(raw, np.ndarray) else raw
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)):
        raise TypeError(f"state[{name!r}] must be a list of integers, got {v._show(raw)}")
    for i, key in enumerate(items):
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise TypeError(
                f"state[{name!r}] must hold integers, got {key!r} of type {type(key).__name__} at index {i}"
            )
    try:
        keys = np.array(items, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"state[{name!r}] do not fit state[{dtype_name!r}] {dtype_value!r}: {err}") from err
    if keys.ndim != 1:
        raise ValueError(f"state[{name!r}] must be a list of integers, got shape {keys.shape}")
    return keys
