"""RP-SAMPLER (Algorithm 2) as a conversation with the caller: the trainer generates, the sampler decides.

    builder = sampler.begin(weights, step)
    while (request := builder.next_request()) is not None:
        ...generate request.counts[k] prompts of task k, N rollouts each, score them...
        builder.report(groups)              # any grouping and order; every requested group once
    batch = builder.finish()                # which reported groups form the batch, and a BatchReport

All randomness of a batch comes from a numpy Generator seeded by (seed, step): ranks that report the same groups in
the same order make identical decisions, and a restored sampler continues identically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import _validate as v
from mtgrpo_core.acceptance import (
    BetaFilterRate,
    EMAFilterRate,
    FilterRateEstimator,
    inflation,
    plan_requests,
)
from mtgrpo_core.advantages import zero_gradient_mask
from mtgrpo_core.report_keys import KeyLedger
from mtgrpo_core.sampler_config import SamplerConfig
from mtgrpo_core.targets import draw_counts


@dataclass(frozen=True)
class Request:
    """Prompts to generate now: counts[k] prompts of task k (N rollouts each). round 0 is the first request."""

    counts: NDArray[np.int64]
    round: int

    @property
    def total(self) -> int:
        return int(self.counts.sum())


@dataclass(frozen=True)
class GroupReport:
    """One generated and scored prompt group: its task, a caller-side key unique within the batch, and either the
    N rewards (the sampler applies its filter) or whether the group is informative (the caller filtered)."""

    task: int
    key: Hashable
    rewards: ArrayLike | None = None
    informative: bool | None = None


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

    @property
    def realized_shares(self) -> NDArray[np.float64]:
        total = self.realized_counts.sum()
        return self.realized_counts / total if total else np.zeros_like(self.weights)


@dataclass(frozen=True)
class Batch:
    """The groups that form the training batch, in report order, and the conversation's report."""

    tasks: NDArray[np.int64]
    keys: NDArray[Any]
    rewards: NDArray[np.float64] | None
    report: BatchReport
    _informative: NDArray[np.bool_] = field(repr=False)

    @property
    def groups(self) -> list[GroupReport]:
        rewards = self.rewards
        return [
            GroupReport(
                task=int(t),
                key=k,
                rewards=None if rewards is None else rewards[i],
                informative=bool(self._informative[i]),
            )
            for i, (t, k) in enumerate(zip(self.tasks, self.keys, strict=True))
        ]

    def __len__(self) -> int:
        return int(self.tasks.shape[0])


class BatchBuilder:
    """One batch's conversation (Algorithm 2, steps 1-6). Created by `RatioPreservingSampler.begin`."""

    def __init__(
        self,
        config: SamplerConfig,
        weights: NDArray[np.float64],
        filter_rate: NDArray[np.float64],
        estimator: FilterRateEstimator,
        rng: np.random.Generator,
    ) -> None:
        self.config = config
        self.weights = weights
        self._k = int(weights.shape[0])
        self._estimator = estimator
        self._rng = rng
        ones = np.ones(self._k)
        self._inflation = inflation(filter_rate, config.max_inflation) if config.acceptance_aware else ones
        self.targets = draw_counts(config.targets, weights, config.batch_size, rng)  # step 1
        self._round = 0
        self._done = False
        self._finished = False
        self._pending = np.zeros(self._k, dtype=np.int64)
        self._generated = np.zeros(self._k, dtype=np.int64)
        self._accepted_count = np.zeros(self._k, dtype=np.int64)
        self._reward_sum = np.zeros(self._k)
        self._reward_n = np.zeros(self._k, dtype=np.int64)
        self._tasks: list[NDArray[np.int64]] = []
        self._keys = KeyLedger()
        self._rewards: list[NDArray[np.float64] | None] = []
        self._informative: list[NDArray[np.bool_]] = []

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def outstanding(self) -> NDArray[np.int64]:
        """Requested groups not reported yet, per task."""
        return self._pending.copy()

    # -- requests -------------------------------------------------------------------------------------------
    def next_request(self) -> Request | None:
        """The next prompts to generate, or None when the batch is complete or the round budget is spent."""
        if self._finished:
            raise ValueError("next_request called after finish(); begin a new batch")
        if self._pending.any():
            raise ValueError(
                f"{int(self._pending.sum())} requested groups are not reported yet (per task: "
                f"{self._pending.tolist()}); report them before asking for the next request"
            )
        counts = None if self._done else self._plan()
        if counts is None or not counts.any():
            self._done = True
            return None
        self._round += 1
        self._pending += counts
        self._generated += counts
        return Request(counts=counts, round=self._round - 1)

    def _plan(self) -> NDArray[np.int64] | None:
        cfg = self.config
        if self._round == 0:
            if cfg.filtering == "none":
                return self.targets.copy()
            if cfg.ratio_constraint and cfg.planner == "posterior":
                return self._posterior_request(self.targets)
            return self._paper_request(self.weights * self._inflation)  # steps 2-3
        if cfg.filtering == "none" or self._round > cfg.max_rounds:
            return None
        if not cfg.ratio_constraint:
            short = cfg.batch_size - int(self._accepted_count.sum())
            return self._paper_request(self.weights * self._inflation) if short > 0 else None
        deficit = np.maximum(self.targets - self._accepted_count, 0)  # step 4
        if not deficit.any():
            return None
        if cfg.planner == "posterior":
            return self._posterior_request(deficit)
        return self._paper_request(deficit * self._inflation)  # step 5

    def _paper_request(self, scores: NDArray[np.float64]) -> NDArray[np.int64] | None:
        """nhat ~ Multinomial(M_os * B, zhat) with zhat proportional to scores (Algorithm 2, steps 3 and 5)."""
        if not (scores > 0).any():
            return None
        total = math.ceil(self.config.oversample * self.config.batch_size)
        return draw_counts(self.config.targets, scores / scores.sum(), total, self._rng)

    def _posterior_request(self, deficit: NDArray[np.int64]) -> NDArray[np.int64]:
        """Per-task requests reaching each deficit with the configured confidence, within the round budget."""
        cfg = self.config
        est = self._estimator
        if isinstance(est, BetaFilterRate):
            alpha, beta = est.alpha, est.beta
        else:  # a point estimate: a confident Beta around it
            accept = np.clip(1.0 - est.filter_rate, 1e-6, 1.0)
            alpha, beta = 1e6 * accept, 1e6 * (1.0 - accept) + 1e-6
        cap = np.ceil(deficit * cfg.max_inflation).astype(np.int64)
        r = plan_requests(deficit, alpha, beta, cfg.confidence, cap)
        budget = math.ceil(cfg.oversample * cfg.batch_size)
        if r.sum() > budget:  # share the round budget in proportion to the plan
            r = draw_counts("apportion", r / r.sum(), budget, self._rng)
        return r

    # -- reports --------------------------------------------------------------------------------------------
    def report(self, groups: Iterable[GroupReport]) -> None:
        """Report generated groups (any subset of what was requested, in any order). Refused whole if any is bad."""
        items = list(groups)
        if not items:
            return
        for i, g in enumerate(items):
            if not isinstance(g, GroupReport):
                raise TypeError(f"groups[{i}] must be a GroupReport, got {type(g).__name__}")
        with_rewards = [g.rewards is not None for g in items]
        if any(with_rewards) and not all(with_rewards):
            raise ValueError("groups must all carry rewards or all carry `informative` within one report call")
        tasks = np.array([g.task for g in items])
        keys = [g.key for g in items]
        if all(with_rewards):
            rows = [
                v.as_float_array(f"groups[{i}].rewards", g.rewards, ndim=1)
                for i, g in enumerate(items)
                if g.rewards is not None
            ]
            sizes = {r.shape[0] for r in rows}
            if sizes != {self.config.group_size}:
                raise ValueError(
                    f"each group's rewards must have group_size={self.config.group_size} entries, "
                    f"got sizes {sorted(sizes)}"
                )
            self.report_arrays(tasks, keys, rewards=np.stack(rows))
        else:
            self.report_arrays(tasks, keys, informative=np.array([g.informative for g in items]))

    def report_arrays(
        self,
        tasks: ArrayLike,
        keys: Sequence[Hashable] | ArrayLike,
        rewards: ArrayLike | None = None,
        informative: ArrayLike | None = None,
    ) -> None:
        """Vectorised `report`: tasks (n,), keys (n,), and rewards (n, N) or informative (n,) bool."""
        if self._finished:
            raise ValueError("report called after finish(); begin a new batch")
        t = v.task_ids("tasks", tasks, self._k)
        key_arr = self._keys.add(keys)  # type: ignore[arg-type]
        if key_arr.shape[0] != t.shape[0]:
            raise ValueError(f"tasks and keys must have the same length, got {t.shape[0]} and {key_arr.shape[0]}")
        if (rewards is None) == (informative is None):
            raise ValueError("pass exactly one of rewards (n, N) or informative (n,)")
        r: NDArray[np.float64] | None = None
        if rewards is not None:
            r = v.finite_array("rewards", rewards, ndim=2)
            if r.shape != (t.shape[0], self.config.group_size):
                raise ValueError(f"rewards must have shape ({t.shape[0]}, {self.config.group_size}), got {r.shape}")
            info = ~zero_gradient_mask(
                r,
                filter="strict" if self.config.filtering == "strict" else "lenient",
                correct_reward=self.config.correct_reward,
            )
        else:
            info = np.asarray(informative)
            if info.dtype != np.bool_ or info.shape != t.shape:
                raise ValueError(f"informative must be a bool array of shape {t.shape}, got {info.dtype} {info.shape}")
        per_task = np.bincount(t, minlength=self._k)
        over = per_task > self._pending
        if over.any():
            k = int(np.argmax(over))
            raise ValueError(
                f"task {k}: {int(per_task[k])} groups reported but only {int(self._pending[k])} requested and not yet "
                "reported (a group never requested, or reported twice)"
            )
        accepted = info if self.config.filtering != "none" else np.ones_like(info)
        self._pending -= per_task
        self._tasks.append(t)
        self._keys.commit(key_arr)
        self._rewards.append(r)
        self._informative.append(info)
        self._accepted_count += np.bincount(t[accepted], minlength=self._k)
        if r is not None:
            self._reward_sum += np.bincount(t, weights=r.sum(axis=1), minlength=self._k)
            self._reward_n += per_task * self.config.group_size

    # -- selection ------------------------------------------------------------------------------------------
    def finish(self) -> Batch:
        """Select the batch (Algorithm 2, step 6) and fold what the filter saw into the filter-rate estimate."""
        if self._finished:
            raise ValueError("finish() called twice on the same batch")
        if self._pending.any():
            raise ValueError(
                f"{int(self._pending.sum())} requested groups were never reported (per task: {self._pending.tolist()})"
                "; report every requested group before finish() so that nothing is lost"
            )
        self._finished = True
        cfg = self.config
        tasks = np.concatenate(self._tasks) if self._tasks else np.zeros(0, dtype=np.int64)
        info = np.concatenate(self._informative) if self._informative else np.zeros(0, dtype=np.bool_)
        accepted = info if cfg.filtering != "none" else np.ones_like(info)
        idx = np.flatnonzero(accepted)
        if cfg.ratio_constraint and idx.shape[0] > cfg.batch_size:
            idx = self._select_by_ratio(tasks, idx)
        else:
            idx = idx[: cfg.batch_size]
        realized = np.bincount(tasks[idx], minlength=self._k)
        accepted_count = np.bincount(tasks[accepted], minlength=self._k)
        informative = np.bincount(tasks[info], minlength=self._k)
        if cfg.filtering != "none":
            self._estimator.update(self._generated, informative)
        short = np.flatnonzero(realized < self.targets)
        complete = idx.shape[0] == cfg.batch_size and (not cfg.ratio_constraint or short.size == 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_reward = np.where(self._reward_n > 0, self._reward_sum / np.maximum(self._reward_n, 1), np.nan)
        report = BatchReport(
            weights=self.weights.copy(),
            target_counts=self.targets.copy(),
            realized_counts=realized,
            rounds=self._round,
            generated=self._generated.copy(),
            informative=informative,
            accepted=accepted_count,
            surplus=accepted_count - realized,
            budget_exhausted=not complete,
            short_tasks=tuple(int(k) for k in short),
            mean_reward=mean_reward,
        )
        rewards = None
        if self._rewards and all(r is not None for r in self._rewards):
            rewards = np.concatenate([r for r in self._rewards if r is not None])[idx]
        return Batch(
            tasks=tasks[idx],
            keys=self._keys.take(idx),
            rewards=rewards,
            report=report,
            _informative=info[idx],
        )

    def _select_by_ratio(self, tasks: NDArray[np.int64], idx: NDArray[np.int64]) -> NDArray[np.int64]:
        """Keep a uniform random subset of at most n_k accepted groups per task, then fill up to exactly B with a
        uniform random subset of the remaining accepted groups (Algorithm 2, step 6)."""
        t = tasks[idx]
        order = np.argsort(t + self._rng.random(idx.shape[0]), kind="stable")  # by task, random within a task
        sorted_t = t[order]
        starts = np.concatenate(([0], np.cumsum(np.bincount(sorted_t, minlength=self._k))[:-1]))
        rank = np.arange(sorted_t.shape[0]) - starts[sorted_t]
        keep = np.zeros(idx.shape[0], dtype=np.bool_)
        keep[order] = rank < self.targets[sorted_t]
        rest = np.flatnonzero(~keep)
        fill = self.config.batch_size - int(keep.sum())
        if fill > 0:  # a uniform random subset of the rest: the `fill` smallest of fresh uniform priorities
            keep[rest[np.argpartition(self._rng.random(rest.shape[0]), fill - 1)[:fill]]] = True
        return idx[keep]


class RatioPreservingSampler:
    """RP-SAMPLER (Algorithm 2) with its filter-rate estimate. `begin` starts one batch conversation."""

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
            estimator = BetaFilterRate(self._k) if config.planner == "posterior" else EMAFilterRate(self._k)
        if estimator.num_tasks != self._k:
            raise ValueError(f"estimator tracks {estimator.num_tasks} tasks, expected num_tasks={self._k}")
        self.estimator = estimator

    @property
    def num_tasks(self) -> int:
        return self._k

    def begin(self, weights: ArrayLike, step: int) -> BatchBuilder:
        """Start the batch of training step `step` with task weights z."""
        z = v.simplex("weights", weights, self._k)
        step = v.positive_int("step", step, minimum=0)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step]))
        return BatchBuilder(self.config, z, self.estimator.filter_rate, self.estimator, rng)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "rp_sampler",
            "num_tasks": self._k,
            "seed": self.seed,
            "config": self.config.to_dict(),
            "estimator": self.estimator.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, "rp_sampler", self._k)
        if dict(state["config"]) != self.config.to_dict():
            raise ValueError(
                f"state['config'] {dict(state['config'])} differs from this sampler's config {self.config.to_dict()}"
            )
        self.seed = int(state["seed"])
        self.estimator.load_state_dict(state["estimator"])


def run_batch(builder: BatchBuilder, generate: Callable[[Request], Iterable[GroupReport]]) -> Batch:
    """Drive a conversation with a generate-and-score callback; the round budget bounds the loop."""
    while (request := builder.next_request()) is not None:
        builder.report(generate(request))
    return builder.finish()
