"""RP-SAMPLER (Algorithm 2) as a conversation with the caller: the trainer generates, the sampler decides.

    builder = sampler.begin(weights, step)
    while (request := builder.next_request()) is not None:
        ...generate request.counts[k] prompts of task k, N rollouts each, score them...
        builder.report_arrays(tasks, rewards=..., payloads=...)   # any grouping and order; every group once
    batch = builder.finish()   # the groups to train (keys, payloads, staleness), to free, and a BatchReport

The conversation (`BatchBuilder`) draws the targets, asks its planner (`planners`) for each round's request,
books reports in a `BatchLedger` (`batch`) and lets the planner select the batch (`targets`).
All randomness of a batch comes from a numpy Generator seeded by (seed, step): ranks that report the same groups in
the same order make identical decisions, and a restored sampler continues identically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.advantages import checked_zero_gradient_mask
from mtgrpo_core.sampling.acceptance import FilterRateEstimator, inflation
from mtgrpo_core.sampling.batch import Batch, BatchLedger, BatchReport, KeyArray, Request
from mtgrpo_core.sampling.carry_pool import CarryPool
from mtgrpo_core.sampling.config import SamplerConfig
from mtgrpo_core.sampling.planners import Planner, PlanView, default_estimator, planner_for
from mtgrpo_core.sampling.targets import NoSignalGuard, draw_counts, fair_share

__all__ = ["Batch", "BatchBuilder", "BatchReport", "RatioPreservingSampler", "Request"]


@dataclass
class KeyCounter:
    """The next key the sampler assigns to a group reported without one (part of the sampler's state)."""

    next: int = 0


def _read_only(arr: NDArray[Any]) -> NDArray[Any]:
    """A view of arr that a planner cannot write through."""
    view = arr.view()
    view.flags.writeable = False
    return view


class BatchBuilder:
    """One batch's conversation (Algorithm 2, steps 1-6). Created by `RatioPreservingSampler.begin`."""

    def __init__(
        self,
        config: SamplerConfig,
        weights: NDArray[np.float64],
        estimator: FilterRateEstimator,
        planner: Planner,
        rng: np.random.Generator,
        guard: NoSignalGuard | None = None,
        carry: CarryPool | None = None,
        counter: KeyCounter | None = None,
        cap: int | None = None,
    ) -> None:
        self.config = config
        self._cap = cap  # prompts this step may generate (`SamplerConfig.cap_prompts`); None: no cap
        self.capped = False  # the cap cut a request (reported)
        self._counter = KeyCounter() if counter is None else counter
        self._k = int(weights.shape[0])
        self._guard = guard
        self.barren = guard.barren if guard is not None else np.zeros(self._k, dtype=np.bool_)
        self.weights = guard.sampling_weights(weights) if guard is not None else weights
        self._estimator = estimator
        self._planner = planner
        self._rng = rng
        ones = np.ones(self._k)
        self._inflation = inflation(estimator.filter_rate, config.max_inflation) if config.acceptance_aware else ones
        self.targets = draw_counts(config.targets, self.weights, config.batch_size, rng)  # step 1
        self._views = (_read_only(self.weights), _read_only(self.targets), _read_only(self._inflation))  # for planners
        self._round = 0
        self._done = False
        self._finished = False
        self.report: BatchReport | None = None  # set by finish()
        self._ledger = BatchLedger(self._k, config.group_size)
        self._carry = carry
        offered = carry.offer() if carry is not None else None
        self._carried_staleness = np.zeros(0, dtype=np.int64) if offered is None else offered.staleness
        if offered is not None and len(offered):
            self._ledger.record_carried(offered.tasks, offered.keys, offered.rewards, offered.payloads)

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def outstanding(self) -> NDArray[np.int64]:
        """Requested groups not reported yet, per task."""
        return self._ledger.pending.copy()

    def rollouts(self) -> tuple[NDArray[np.int64], NDArray[np.float64]] | None:
        """Task and reward of every rollout reported so far this step (carried groups excluded), flattened in report
        order: what J_k and accuracy are measured on. None if a group was reported without rewards."""
        return self._ledger.fresh_rollouts()

    def next_request(self) -> Request | None:
        """The next prompts to generate, or None when the batch is complete or the round budget is spent.

        Round 0 is the first request (Algorithm 2, steps 2-3); later rounds resample (step 5) while
        round <= N_rs (`max_rounds`), the planner asks for more and the generation cap leaves room (beyond the
        paper: each request is fitted into it by `targets.fair_share`).
        """
        if self._finished:
            raise ValueError("next_request called after finish(); begin a new batch")
        self._ledger.require_reported("asking for the next request")
        counts = None
        if not self._done and self._round <= self.config.max_rounds:
            weights, targets, inflated = self._views
            view = PlanView(
                round=self._round,
                weights=weights,
                targets=targets,
                inflation=inflated,
                accepted=_read_only(self._ledger.accepted.copy()),
                estimator=self._estimator,
            )
            counts = self._planner.plan(view, self._rng)
            guard = self._guard if self._round == 0 and self.barren.any() else None  # probes of barren tasks
            probes = guard.probes() if guard is not None else None
            if probes is not None or (counts is not None and self._cap is not None):
                counts = self._within_cap(counts, probes)
        if counts is None or not counts.any():
            self._done = True
            return None
        self._round += 1
        self._ledger.requested(counts)
        return Request(counts=counts, round=self._round - 1)

    def _within_cap(self, counts: NDArray[np.int64] | None, probes: NDArray[np.int64] | None) -> NDArray[np.int64]:
        """The plan plus the guard's probes, fitted into what the generation cap leaves of this step: probes first,
        then the plan by `fair_share` on the weights; sets `capped` when either is cut."""
        plan = np.zeros(self._k, dtype=np.int64) if counts is None else counts
        extra = np.zeros(self._k, dtype=np.int64) if probes is None else probes
        if self._cap is None:
            return plan + extra
        room = self._cap - int(self._ledger.generated.sum())
        fitted_extra = fair_share(extra, room, np.ones(self._k))
        fitted = fair_share(plan, room - int(fitted_extra.sum()), self.weights)
        self.capped |= int(fitted.sum() + fitted_extra.sum()) < int(plan.sum() + extra.sum())
        return fitted + fitted_extra

    def report_arrays(
        self,
        tasks: ArrayLike,
        keys: ArrayLike | None = None,
        rewards: ArrayLike | None = None,
        informative: ArrayLike | None = None,
        payloads: Sequence[Any] | None = None,
    ) -> KeyArray:
        """Report generated groups: tasks (n,), and rewards (n, N) (the sampler applies its filter, Algorithm 2
        step 4) or informative (n,) bool (the caller filtered). keys: integer keys (n,) unique in the batch (unique
        across steps with carry-over), or None to let the sampler number the groups. payloads: n opaque objects,
        the trainer's handle on each group's data; the batch hands them back for the groups to train (fresh and
        carried) and to free, and the sampler holds those of kept groups between steps. Returns the keys.

        Any subset of what was requested, in any order; a bad report is refused whole and changes nothing.
        """
        if self._finished:
            raise ValueError("report called after finish(); begin a new batch")
        t = v.task_ids("tasks", tasks, self._k)
        assigned = keys is None
        if assigned:
            keys = np.arange(self._counter.next, self._counter.next + t.shape[0], dtype=np.int64)
        key_arr = self._ledger.check_keys(keys)
        held = None
        if payloads is not None:
            if isinstance(payloads, str | bytes) or not isinstance(payloads, Sequence) or len(payloads) != t.shape[0]:
                shown = type(payloads).__name__ if not isinstance(payloads, Sequence) else f"{len(payloads)} items"
                raise ValueError(f"payloads must be a sequence of {t.shape[0]} objects (one per group), got {shown}")
            held = tuple(payloads)
        if self._carry is not None:
            self._carry.refuse_retired(key_arr)
        v.same_length("tasks", t, "keys", key_arr)
        if (rewards is None) == (informative is None):
            raise ValueError("pass exactly one of rewards (n, N) or informative (n,)")
        r: NDArray[np.float64] | None = None
        if rewards is not None:
            r = v.finite_array("rewards", rewards, ndim=2)
            if r.shape != (t.shape[0], self.config.group_size):
                raise ValueError(f"rewards must have shape ({t.shape[0]}, {self.config.group_size}), got {r.shape}")
            strict = self.config.filtering == "strict"  # the config's filter and correct_reward are checked
            info = ~checked_zero_gradient_mask(r, "strict" if strict else "lenient", float(self.config.correct_reward))
        else:
            info = np.asarray(informative)
            if info.dtype != np.bool_ or info.shape != t.shape:
                raise ValueError(
                    f"informative must be a bool array of shape {t.shape}, got dtype {info.dtype} shape {info.shape}"
                )
        accepted = info if self.config.filtering != "none" else np.ones_like(info)
        self._ledger.record(t, key_arr, r, info, accepted, held)
        if assigned:
            self._counter.next += t.shape[0]
        return key_arr

    def finish(self) -> Batch:
        """Select the batch (Algorithm 2, step 6) and fold what the filter saw into the filter-rate estimate."""
        if self._finished:
            raise ValueError("finish() called twice on the same batch")
        self._ledger.require_reported("finish() so that nothing is lost")
        self._finished = True
        cfg, ledger = self.config, self._ledger
        tasks, keys, rewards = ledger.tasks(), ledger.keys(), ledger.rewards()
        info = ledger.informative()
        carried = ledger.carried()
        idx = self._planner.select(tasks, ledger.accepted_positions(), self.targets, self._rng, carried)
        realized = np.bincount(tasks[idx], minlength=self._k)
        informative = np.bincount(tasks[info & ~carried], minlength=self._k)
        staleness = np.zeros(tasks.shape[0], dtype=np.int64)
        staleness[: self._carried_staleness.shape[0]] = self._carried_staleness  # carried groups are booked first
        in_batch = np.zeros(tasks.shape[0], dtype=np.bool_)
        in_batch[idx] = True
        kept = np.zeros(tasks.shape[0], dtype=np.bool_)
        if self._carry is not None:  # informative groups not used wait for a later step, within the bound
            spare = np.flatnonzero(info & ~in_batch)
            others = np.ones(tasks.shape[0], dtype=np.bool_)
            others[spare] = False
            kept[spare] = self._carry.store(
                tasks[spare],
                keys[spare],
                None if rewards is None else rewards[spare],
                staleness[spare],
                keys[others],
                ledger.payloads(spare),
            )
        if cfg.filtering != "none":
            self._estimator.update(ledger.generated, informative)
        if self._guard is not None:
            self._guard.update(ledger.generated, informative)
        short = np.flatnonzero(realized < self.targets)
        complete = idx.shape[0] == cfg.batch_size and (not cfg.ratio_constraint or short.size == 0)
        report = BatchReport(
            weights=self.weights.copy(),
            target_counts=self.targets.copy(),
            realized_counts=realized,
            rounds=self._round,
            generated=ledger.generated.copy(),
            informative=informative,
            accepted=ledger.accepted.copy(),
            surplus=ledger.accepted - realized,
            budget_exhausted=not complete,
            capped=self.capped,
            short_tasks=tuple(int(k) for k in short),
            mean_reward=ledger.mean_reward(),
            barren_tasks=tuple(int(k) for k in np.flatnonzero(self.barren)),
            carried_counts=np.bincount(tasks[idx][carried[idx]], minlength=self._k),
            kept_counts=np.bincount(tasks[kept], minlength=self._k),
        )
        self.report = report
        released = np.flatnonzero(~in_batch & ~kept)
        return Batch(
            tasks=tasks[idx],
            keys=keys[idx],
            rewards=None if rewards is None else rewards[idx],
            report=report,
            staleness=staleness[idx],
            kept=keys[kept],
            released=keys[released],
            payloads=ledger.payloads(idx),
            released_payloads=ledger.payloads(released),
        )


class RatioPreservingSampler:
    """RP-SAMPLER (Algorithm 2) with its filter-rate estimate. `begin` starts one batch conversation.

    The planner comes from the config (`planners.planner_for`); the estimator defaults to the one registered with
    `config.planner` (EMA for "paper", Beta posterior for "posterior").
    """

    def __init__(
        self,
        num_tasks: int,
        config: SamplerConfig,
        seed: int = 0,
        estimator: FilterRateEstimator | None = None,
    ) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        if not isinstance(config, SamplerConfig):
            raise TypeError(f"config must be a SamplerConfig, got {type(config).__name__}")
        self.config = config
        self.seed = v.positive_int("seed", seed, minimum=0)
        if estimator is None:
            estimator = default_estimator(config, self._k)
        if estimator.num_tasks != self._k:
            raise ValueError(f"estimator tracks {estimator.num_tasks} tasks, expected num_tasks={self._k}")
        self.estimator = estimator
        self.planner = planner_for(config)
        self.cap = config.cap_prompts(self._k)
        guarded = config.filtering != "none" and config.guard_floor > 0
        probe = -(-config.batch_size // self._k) if config.guard_probe is None else config.guard_probe
        self.guard = NoSignalGuard(self._k, config.guard_floor, probe=probe) if guarded else None
        self.carry = (
            CarryPool(
                self._k,
                config.carry_over,
                group_size=config.group_size,
                filtering=config.filtering,
                correct_reward=config.correct_reward,
            )
            if config.carry_over > 0
            else None
        )
        self.keys = KeyCounter()

    @property
    def num_tasks(self) -> int:
        return self._k

    def begin(self, weights: ArrayLike, step: int) -> BatchBuilder:
        """Start the batch of training step `step` with task weights z."""
        z = v.simplex("weights", weights, self._k)
        step = v.positive_int("step", step, minimum=0)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step]))
        return BatchBuilder(
            self.config, z, self.estimator, self.planner, rng, self.guard, self.carry, self.keys, self.cap
        )

    def state_dict(self) -> dict[str, Any]:
        """Seed, config, estimator, guard and carry state and the next key it assigns; JSON-native types only
        (`json.dumps` works as is). Kept groups' payloads are not in it: see `load_state_dict`."""
        return {
            "kind": "rp_sampler",
            "num_tasks": self._k,
            "seed": self.seed,
            "next_key": self.keys.next,
            "config": self.config.to_dict(),
            "estimator": self.estimator.state_dict(),
            "guard": None if self.guard is None else self.guard.state_dict(),
            "carry": None if self.carry is None else self.carry.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any], kept_payloads: Mapping[int, Any] | None = None) -> None:
        """Restore what `state_dict` returned (also after a JSON round trip), with the kept groups' payloads (by
        key, as `carry.payloads()` gave them when saving) if they were reported with payloads."""
        v.state_matches(state, "rp_sampler", self._k)
        if dict(state["config"]) != self.config.to_dict():
            raise ValueError(
                f"state['config'] is {dict(state['config'])}, expected this sampler's config {self.config.to_dict()}"
            )
        seed = v.positive_int("state['seed']", state["seed"], minimum=0)
        if "next_key" not in state:
            raise ValueError("state lacks 'next_key' (the next key the sampler assigns): not a complete sampler state")
        next_key = v.positive_int("state['next_key']", state["next_key"], minimum=0)
        if (state.get("guard") is None) != (self.guard is None):
            raise ValueError(f"state['guard'] is {state.get('guard')!r}, but this sampler's guard is {self.guard}")
        if (state.get("carry") is None) != (self.carry is None):
            raise ValueError(f"state['carry'] is {state.get('carry')!r}, but this sampler's carry-over is {self.carry}")
        backup = self.state_dict()
        held = self.carry.payloads() if self.carry is not None else None
        try:
            self.estimator.load_state_dict(state["estimator"])
            if self.guard is not None:
                self.guard.load_state_dict(state["guard"])
            if self.carry is not None:
                self.carry.load_state_dict(state["carry"], kept_payloads)
            elif kept_payloads:
                raise ValueError(f"kept_payloads given for keys {sorted(kept_payloads)[:5]}, but carry-over is off")
        except Exception:
            self.estimator.load_state_dict(backup["estimator"])
            if self.guard is not None:
                self.guard.load_state_dict(backup["guard"])
            if self.carry is not None:
                self.carry.load_state_dict(backup["carry"], held)
            raise
        self.seed = seed
        self.keys.next = next_key
