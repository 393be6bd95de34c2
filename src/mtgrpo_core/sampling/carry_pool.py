"""Carry-over (beyond the paper): informative groups generated but not needed are kept for the next steps.

Any planner that throws informative surplus away pays for it: the paper's 3-task case cannot go below about 2.5
prompts generated per prompt used without many rounds. Keeping the surplus for at most `max_staleness` later
steps (trained then with the clipped importance ratio against the policy that generated it) lets the next batch
start from it. The sampler offers the kept groups at the start of each conversation, before any request; the
batch says which of its groups are carried (and how stale), which groups it keeps, and which the trainer may free.
With carry-over on, keys must be unique across steps: the pool remembers the keys the last step retired (trained
or released) and refuses a later report of any of them (the trainer's data for them may be gone).

In streaming mode (`SamplerConfig.steps_ahead`) the pool is also the buffer of ahead requests in flight: per
version (the step whose policy generates them), the groups requested and not yet booked by a batch. A later step's
report of that version is checked against it and booked with staleness = step - version. Groups reported as soon as
they are generated (`Controller.report_ahead`) are held here, as reported, until the step they are due at
(`HeldGroups`); they count as reported, and their keys as used.

The pool also holds each kept or held group's payload, the trainer's own handle on its data (rows, tensors,
TransferQueue keys), so no trainer keeps a store of its own. Payloads are opaque and stay out of the JSON state: a
trainer that checkpoints saves `payloads()` with its own tensors and hands them back to `load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.advantages import reported_groups, zero_gradient_mask
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


@dataclass(frozen=True)
class HeldGroups:
    """Groups of the ahead request of `version` reported before their due step (`Controller.report_ahead`), as
    reported: task (n,), key (n,), rewards (n, N) or the caller's informative (n,) flags (exactly one), payloads."""

    version: int
    tasks: NDArray[np.int64]
    keys: KeyArray
    rewards: NDArray[np.float64] | None
    informative: NDArray[np.bool_] | None
    payloads: tuple[Any, ...] | None = None


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
        self._in_flight: dict[int, NDArray[np.int64]] = {}  # version -> groups per task requested, not booked
        self._held: list[HeldGroups] = []  # ahead groups reported before their due step, in report order

    def refuse_retired(self, keys: KeyArray) -> None:
        """Refuse keys that the last step trained or released (a group reported again after it was retired), and
        keys of held groups."""
        again = _found(self._retired_sorted, keys)
        if again:
            raise ValueError(
                f"keys {again[:5]} were trained or released at the last step and are reported again; with "
                "carry-over every reported group needs a key never used before (e.g. a counter across steps)"
            )
        held = _found(np.sort(_joined([h.keys for h in self._held])), keys)
        if held:
            raise ValueError(
                f"keys {held[:5]} belong to ahead groups already reported (Controller.report_ahead) and held for "
                "their due step; expected each group reported once, with a key never used before"
            )

    def issue(self, version: int, counts: NDArray[np.int64]) -> None:
        """Book an ahead request generated by the policy of step `version` (streaming mode)."""
        self._in_flight[version] = counts.copy()  # one ahead request per step

    def in_flight(self) -> NDArray[np.int64]:
        """Groups per task of ahead requests not reported yet (neither booked nor held), all versions."""
        return sum(self.awaiting().values(), np.zeros(self._k, dtype=np.int64))

    def awaiting(self, last_version: int | None = None) -> dict[int, NDArray[np.int64]]:
        """Per version in flight (up to `last_version`), the groups per task its ahead request still awaits (neither
        booked nor held); all zero once every group is held."""
        out = {}
        for version, counts in sorted(self._in_flight.items()):
            if last_version is None or version <= last_version:
                held = [h.tasks for h in self._held if h.version == version]
                out[version] = counts - np.bincount(_joined(held), minlength=self._k) if held else counts.copy()
        return out

    def take(self, version: int, tasks: NDArray[np.int64]) -> None:
        """Book the report of groups `tasks` answering the ahead request of `version`; a version with nothing in
        flight, or more groups of a task than it awaits, is refused and changes nothing."""
        self._check_awaited(version, tasks)
        left = self._in_flight[version] - np.bincount(tasks, minlength=self._k)
        if left.any():
            self._in_flight[version] = left
        else:
            del self._in_flight[version]

    def hold(self, groups: HeldGroups) -> None:
        """Hold ahead groups reported before their due step, checked as `take` checks a report and their keys
        against every retired, held and kept key; a refused report changes nothing. `due` hands them back."""
        self._check_awaited(groups.version, groups.tasks)
        self.refuse_retired(groups.keys)
        kept = _found(np.sort(self._groups.keys), groups.keys)
        if kept:
            raise ValueError(
                f"keys {kept[:5]} belong to groups kept from an earlier step; expected keys never used before"
            )
        if len(groups.tasks):
            self._held.append(groups)

    def due(self, last_version: int) -> list[HeldGroups]:
        """Remove and return the held groups of versions up to `last_version`, by version, then in report order."""
        due = sorted((h for h in self._held if h.version <= last_version), key=lambda h: h.version)
        self._held = [h for h in self._held if h.version > last_version]
        return due

    def _check_awaited(self, version: int, tasks: NDArray[np.int64]) -> None:
        awaiting = self.awaiting(version).get(version)
        if awaiting is None:
            raise ValueError(
                f"version {version} has no ahead request awaiting reports (versions in flight: "
                f"{sorted(self._in_flight)}); a report's version is the step whose ahead() request it answers"
            )
        left = awaiting - np.bincount(tasks, minlength=self._k)
        if (left < 0).any():
            k = int(np.argmin(left))
            raise ValueError(
                f"tasks holds {int(awaiting[k] - left[k])} groups of task {k} for version {version}, whose ahead "
                f"request awaits only {int(awaiting[k])} more; expected each requested group reported once"
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
        """Forget every kept and held group and every ahead request in flight (a trainer that lost their data);
        their keys stay retired. Returns the kept and held groups' payloads by key."""
        released = self.payloads()
        self._retire(_joined([self._retired, self._groups.keys, *(h.keys for h in self._held)]))
        self._groups = CarriedGroups(np.zeros(0, np.int64), np.zeros(0, np.int64), None, np.zeros(0, np.int64))
        self._in_flight, self._held = {}, []
        return released

    def payloads(self) -> dict[int, Any]:
        """The kept and held groups' payloads by key (none for groups reported without): what a checkpoint saves
        beside the JSON state, to hand back to `load_state_dict`."""
        g = self._groups
        out = {} if g.payloads is None else dict(zip(g.keys.tolist(), g.payloads, strict=True))
        for h in self._held:
            out.update(zip(h.keys.tolist(), h.payloads or (), strict=h.payloads is not None))
        return out

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
            "in_flight": {str(version): counts.tolist() for version, counts in sorted(self._in_flight.items())},
            "held": [
                {
                    "version": h.version,
                    "tasks": h.tasks.tolist(),
                    "keys": h.keys.tolist(),
                    "key_dtype": str(h.keys.dtype),
                    "rewards": None if h.rewards is None else h.rewards.tolist(),
                    "informative": None if h.informative is None else h.informative.tolist(),
                    "payloads": "held by the trainer" if h.payloads is not None else None,
                }
                for h in self._held
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any], payloads: Mapping[int, Any] | None = None) -> None:
        """Restore what `state_dict` returned, with the kept and held groups' `payloads()` when they had payloads.
        Every entry is checked first (integer keys, distinct across kept, held and retired; staleness in [1,
        max_staleness]; rewards (groups, N), each kept group informative under the filter; held groups within
        their version's request; a payload for exactly the kept and held keys reported with one) and a refused
        state changes nothing."""
        v.state_matches(state, self.KIND, self._k)
        if state.get("max_staleness") != self.max_staleness:
            raise ValueError(f"state['max_staleness'] is {state.get('max_staleness')!r}, expected {self.max_staleness}")
        tasks = v.task_ids("state['tasks']", state.get("tasks", []), self._k)
        staleness = v.int_array("state['staleness']", state.get("staleness", []), ndim=1)
        keys = v.state_keys(state, "keys", "key_dtype")
        retired = v.state_keys(state, "retired", "retired_dtype")
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
        in_flight = _in_flight(state.get("in_flight", {}), self._k)
        entries = state.get("held", [])
        if not isinstance(entries, list):
            raise TypeError(f"state['held'] must be a list of held ahead reports, got {v._show(entries)}")
        held = [self._held_from_state(entry, f"state['held'][{i}]", in_flight) for i, entry in enumerate(entries)]
        every = _joined([keys, *(h.keys for h in held)])
        if np.unique(every).shape[0] != every.shape[0] or _found(np.sort(retired), every):
            raise ValueError(
                f"the state's kept keys {keys.tolist()[:5]} and held keys {every.tolist()[n : n + 5]} must be "
                "distinct from each other and from state['retired']"
            )
        for version, counts in in_flight.items():
            booked = [h.tasks for h in held if h.version == version]
            if booked and (np.bincount(_joined(booked), minlength=self._k) > counts).any():
                raise ValueError(
                    f"state['held'] holds more groups of version {version} than state['in_flight'] awaits "
                    f"({counts.tolist()} per task)"
                )
        given = dict(payloads or {})
        kept_payloads = _held_payloads("state['payloads']", state.get("payloads"), keys, given)
        held = [
            replace(h, payloads=_held_payloads(f"state['held'][{i}]['payloads']", e.get("payloads"), h.keys, given))
            for i, (h, e) in enumerate(zip(held, entries, strict=True))
        ]
        if given:
            raise ValueError(
                f"payloads given for unexpected keys {sorted(given)[:5]}: the state neither keeps nor holds groups "
                "of these keys reported with payloads; pass Controller.kept_payloads() as saved"
            )
        self._groups = CarriedGroups(tasks, keys, rewards, staleness, kept_payloads)
        self._retire(retired)
        self._in_flight, self._held = in_flight, held

    def _held_from_state(self, entry: Any, where: str, in_flight: Mapping[int, Any]) -> HeldGroups:
        """One entry of state['held'], checked as `Controller.report_ahead` checks a report (payloads apart)."""
        if not isinstance(entry, Mapping):
            raise TypeError(f"{where} must be a mapping (version, tasks, keys, rewards, ...), got {v._show(entry)}")
        version = v.positive_int(f"{where}['version']", entry.get("version"), minimum=0)
        if version not in in_flight:
            raise ValueError(f"{where}['version'] is {version}, but state['in_flight'] has {sorted(in_flight)}")
        tasks = v.task_ids(f"{where}['tasks']", entry.get("tasks", []), self._k)
        keys = v.state_keys(entry, "keys", "key_dtype")
        v.same_length(f"{where}['tasks']", tasks, f"{where}['keys']", keys)
        rewards, flags = entry.get("rewards"), entry.get("informative")
        n, width = tasks.shape[0], self.group_size
        if width is None and rewards is not None:
            width = v.finite_array(f"{where}['rewards']", rewards, ndim=2).shape[1]
        try:
            r, _ = reported_groups(n, width or 0, rewards, None if flags is None else np.asarray(flags), "lenient", 1.0)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err
        return HeldGroups(version, tasks, keys, r, None if r is not None else np.asarray(flags, dtype=np.bool_))

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


def _held_payloads(name: str, marker: Any, keys: KeyArray, given: dict[int, Any]) -> tuple[Any, ...] | None:
    """The payloads of `keys` in their order, taken out of `given` when the state says the groups had payloads
    (the marker `name` is "held by the trainer"), else None; a missing one is refused."""
    if marker not in (None, "held by the trainer"):
        raise ValueError(f"{name} is {marker!r}, expected None or 'held by the trainer'")
    if marker is None:
        return None
    wanted = keys.tolist()
    missing = [k for k in wanted if k not in given]
    if missing:
        raise ValueError(
            f"{name}: the state holds {len(wanted)} groups with payloads held by the trainer: pass the payload of "
            f"each kept key (Controller.kept_payloads() when saving); missing keys {missing[:5]}"
        )
    return tuple(given.pop(k) for k in wanted)


def _found(seen: KeyArray, keys: KeyArray) -> list[int]:
    """The `keys` that occur in `seen` (sorted), exactly for any integer dtypes (Python ints where no numpy dtype
    holds both)."""
    if seen.size == 0 or keys.size == 0:
        return []
    try:
        dtype = common_key_dtype("keys", keys, seen)
        return list(keys[in_sorted(seen.astype(dtype), keys.astype(dtype))].tolist())
    except ValueError:
        known = set(seen.tolist())
        return [k for k in keys.tolist() if k in known]


def _joined(arrays: Sequence[NDArray[np.integer[Any]]]) -> KeyArray:
    """Integer arrays joined in a dtype that holds every value (the batch key rule)."""
    out: KeyArray = np.zeros(0, np.int64)
    for a in arrays:
        if a.size:
            dtype = common_key_dtype("keys", out, a)
            out = np.concatenate([out.astype(dtype), a.astype(dtype)])
    return out


def _in_flight(value: Any, num_tasks: int) -> dict[int, NDArray[np.int64]]:
    """state['in_flight']: {version as a decimal string: num_tasks non-negative counts, not all zero}."""
    if not isinstance(value, Mapping):
        raise TypeError(f"state['in_flight'] must be a mapping of version -> counts, got {v._show(value)}")
    out = {}
    for version, counts in value.items():
        if not isinstance(version, str) or not version.isdigit():
            raise ValueError(f"state['in_flight'] has version {version!r}, expected a non-negative integer string")
        c = v.int_array(f"state['in_flight'][{version!r}]", counts, ndim=1)
        if c.shape != (num_tasks,) or (c < 0).any() or not c.any():
            raise ValueError(
                f"state['in_flight'][{version!r}] must be {num_tasks} non-negative counts, not all 0, got {counts!r}"
            )
        out[int(version)] = c
    return out
