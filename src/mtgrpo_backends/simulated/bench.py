"""The simulated backend's run of one method with one seed, driven through the real Controller.

Every step runs the full controller conversation (begin_step, requests, report_arrays, finish, end_step) exactly
as a trainer would; the simulated policy only replaces generation and the gradient step. The comparison itself
(worker pool, table, results.json, figures) is the shared harness, mtgrpo_backends.harness.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from mtgrpo_backends.harness.record import RunRecord
from mtgrpo_backends.options import RuleOptions
from mtgrpo_backends.simulated.policy import Groups, SimulatedPolicy
from mtgrpo_backends.simulated.pool_feed import SKIPS, PoolFeed, Skip
from mtgrpo_backends.simulated.suites import Suite
from mtgrpo_core import checks as v
from mtgrpo_core.controller import Controller
from mtgrpo_core.methods import parse_method
from mtgrpo_core.prompts.history import SelectionConfig
from mtgrpo_core.sampling.sampler import BatchReport
from mtgrpo_core.settings import SamplerSettings, Settings
from mtgrpo_core.signals import StepFacts

DEFAULT_METHODS = (
    "grpo",
    "dapo",
    "sec-grpo",
    "sec-dapo",
    "mt-grpo:0.2",
    "mt-grpo:0.25",
    "iwu-only:0.2",
    "rps-only",
    "mt-grpo-noinfl:0.2",
)


def step_facts(
    generated: Groups,
    batch: Groups,
    advantage: NDArray[Any],
    before: NDArray[Any],
    after: NDArray[Any],
    stand_ins: tuple[NDArray[np.int64], NDArray[np.float64]] | None = None,
) -> StepFacts:
    """The step's facts for the core's signal path: every rollout generated this step (plus the stand-in rollouts
    of prompts skipped this step, `Selection.stand_ins`), and the batch's rollouts with their advantages and
    clipped surrogate before and after the update (one update per step: one mini-batch, so a per-mini-batch
    method takes one weight update per step here)."""
    n = generated.rewards.shape[1]
    task, reward = np.repeat(generated.task, n), generated.rewards.ravel()
    if stand_ins is not None:
        task, reward = np.concatenate([task, stand_ins[0]]), np.concatenate([reward, stand_ins[1]])
    return StepFacts(
        rollout_task=task,
        rollout_reward=reward,
        sample_task=np.repeat(batch.task, n),
        sample_advantage=advantage.ravel(),
        surrogate_before=before.ravel(),
        surrogate_after=after.ravel(),
        surrogate_minibatch=np.zeros(before.size, dtype=np.int64),
    )


def _train_step(ctrl: Controller, policy: SimulatedPolicy, feed: PoolFeed | None) -> tuple[BatchReport, int]:
    """One training step (Algorithm 1): the batch conversation, the GRPO step, the controller's weight update.
    feed: the suite's finite pool (None: fresh prompts). Each group is reported with its place in the generated
    Groups as payload; the controller holds those of the groups it keeps for the next step."""
    builder = ctrl.begin_step()
    parts: list[Groups] = []
    while (request := builder.next_request()) is not None:
        g = policy.generate(request.counts) if feed is None else feed(request.counts)
        builder.report_arrays(g.task, rewards=g.rewards, payloads=[(g, i) for i in range(len(g))])
        parts.append(g)
    batch = builder.finish()
    generated = Groups.concat(parts) if parts else Groups.empty(policy.group_size)
    trained = _gather(batch.payloads or (), policy.group_size)
    advantage, before, after = policy.train_step(trained)
    facts = step_facts(generated, trained, advantage, before, after, None if feed is None else feed.stand_ins())
    ctrl.end_step(facts)
    return batch.report, len(batch)


def _gather(payloads: tuple[tuple[Groups, int], ...], group_size: int) -> Groups:
    """The groups named by (Groups, row) payloads, in order."""
    offsets: dict[int, int] = {}
    chunks: list[Groups] = []
    for groups, _ in payloads:
        if id(groups) not in offsets:
            offsets[id(groups)] = sum(len(c) for c in chunks)
            chunks.append(groups)
    if not chunks:
        return Groups.empty(group_size)
    return Groups.concat(chunks).take([offsets[id(groups)] + row for groups, row in payloads])


@dataclass(frozen=True)
class SimulatedRunner:
    """The harness's Runner for the simulated backend: one method with one seed at these settings (picklable;
    forked workers). record_every: held-out accuracy after step 1, every record_every-th step and the last.
    filter: the zero-gradient filter of every method that filters (GRPO's methods stay unfiltered). skip and
    selection: prompt skipping on a suite with a finite pool (`pool_feed`); the history is classified by the
    method's filter, or by `filter` for a method that does not filter. stand_ins=False: skipped prompts do not
    count in J_k and accuracy (an ablation)."""

    suite: Suite
    steps: int
    batch_size: int
    group_size: int
    max_rounds: int
    record_every: int = 1
    sampler: Mapping[str, Any] = field(default_factory=dict)
    rule: RuleOptions = field(default_factory=RuleOptions)
    improvement_reduce: Literal["mean", "sum"] | None = None
    start_method: Literal["fork", "spawn"] = "fork"
    filter: Literal["lenient", "strict"] = "lenient"
    skip: Skip = "none"
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    stand_ins: bool = True

    def __post_init__(self) -> None:
        v.choice("filter", self.filter, ("lenient", "strict"))
        v.choice("skip", self.skip, SKIPS)
        if self.skip != "none" and self.suite.pool_sizes is None:
            raise ValueError(
                f"skip={self.skip!r} needs a suite with a finite prompt pool (pool_size on its tasks, e.g. "
                f"paper3-pool), got suite {self.suite.name!r}"
            )

    def controller(self, method: str, seed: int) -> Controller:
        """A method string ("mt-grpo:0.2", ... or a user's "module:Class", see mtgrpo_core.methods) for a run."""
        settings = Settings(
            method,
            SamplerSettings(**self.sampler_for(method)),
            self.rule.kwargs_for(method),
            improvement_reduce=self.improvement_reduce,
        )
        return settings.controller(self.suite.num_tasks, self.batch_size, self.group_size, seed)

    def sampler_for(self, method: str) -> dict[str, Any]:
        """The sampler overrides of a run: the suite's N_rs unless the method is a reference preset (which sets its
        own) or the sampler overrides name one."""
        spec = parse_method(method)
        if spec.preset is not None:
            return dict(self.sampler)
        strict = self.filter == "strict" and spec.sampler_settings.get("filtering") == "lenient"
        return {
            **({"filtering": "strict"} if strict else {}),
            **({} if "max_rounds" in self.sampler else {"max_rounds": self.max_rounds}),
            **self.sampler,
        }

    def __call__(self, method: str, seed: int, on_step: Callable[[], None] | None = None) -> RunRecord:
        """Run one method for one seed through the real controller conversation; returns its record."""
        start = time.perf_counter()
        k, t = self.suite.num_tasks, self.steps
        policy = self.suite.policy(seed, self.group_size)
        ctrl = self.controller(method, seed)
        feed = self._feed(policy, ctrl, seed)
        eval_steps, acc = [0], [policy.heldout_accuracy()]
        weights, shares = np.zeros((t, k)), np.zeros((t, k))
        rounds, groups, batch = (np.zeros(t, dtype=np.int64) for _ in range(3))
        exhausted = np.zeros(t, dtype=bool)
        for step in range(t):
            try:
                report, batch[step] = _train_step(ctrl, policy, feed)
            except ValueError as err:
                raise ValueError(f"method {method!r}, seed {seed}, step {step}: {err}") from err
            weights[step], shares[step] = report.weights, report.realized_shares
            rounds[step], groups[step] = report.rounds, int(report.generated.sum())
            exhausted[step] = report.budget_exhausted
            if step % self.record_every == 0 or step == t - 1:
                eval_steps.append(step + 1)
                acc.append(policy.heldout_accuracy())
            if on_step is not None:
                on_step()
        return RunRecord(
            method=method,
            seed=seed,
            eval_steps=np.array(eval_steps, dtype=np.int64),
            accuracy=np.array(acc, dtype=np.float64).reshape(-1, k),
            weights=weights,
            shares=shares,
            rounds=rounds,
            generated=groups,
            rollouts=groups * self.group_size,
            trained=batch,
            budget_exhausted=exhausted,
            wall_s=time.perf_counter() - start,
            metrics={} if feed is None else feed.metrics(int(groups.sum()), int(batch.sum())),
            log=None if feed is None else feed.log(),
        )

    def _feed(self, policy: SimulatedPolicy, ctrl: Controller, seed: int) -> PoolFeed | None:
        """The finite pool's feed of a run (None: the suite draws fresh prompts)."""
        if self.suite.pool_sizes is None:
            return None
        method_filter = ctrl.sampler.config.filtering
        selection = replace(self.selection, filtering=self.filter if method_filter == "none" else method_filter)
        return PoolFeed(policy, self.suite.task_names, seed, self.skip, selection, self.stand_ins)
