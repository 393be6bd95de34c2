"""Request planners: how many prompts of each task to generate in each round of a batch conversation.

A planner is a small object built from a `SamplerConfig` with one method pair (the `Planner` protocol):
`plan(view, rng)` returns the next round's request counts (None: stop asking), and `select(...)` picks the
batch from the accepted groups at the end (Algorithm 2, step 6, from `selection`). The conversation hands it a
read-only `PlanView` (round, z, targets n, inflation m, accepted counts c, the filter-rate estimator) and the
batch's numpy Generator, the only source of randomness. The conversation enforces the round budget N_rs.

Built in, registered by name with `register_planner`:
- "paper": Algorithm 2 as published (Multinomial(M_os B, zhat) rounds);
- "posterior": requests sized from a Beta posterior on acceptance, per task (beyond the paper);
- "joint": the same posterior, requests sized so that the whole batch completes with a joint probability
  (`joint_planner`, beyond the paper);
- "dapo": no ratio constraint (first B informative groups; chosen by `ratio_constraint=False`);
- "no-filter": plain GRPO, one request of exactly the targets (chosen by `filtering="none"`).
A new planner is a class with `plan` / `select` and a `register_planner(name, build)` call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.sampling.acceptance import (
    BetaFilterRate,
    EMAFilterRate,
    FilterRateEstimator,
    plan_requests,
    posterior_of,
    unobserved,
)
from mtgrpo_core.sampling.targets import CountScheme, draw_counts, select_by_ratio, select_first

Counts = NDArray[np.int64]
Flags = NDArray[np.bool_]


class PlannerConfig(Protocol):
    """The settings a planner is built from (`SamplerConfig` has them; named here so that the planners do not import
    the config that validates planner names against them)."""

    @property
    def filtering(self) -> str: ...
    @property
    def planner(self) -> str: ...
    @property
    def ratio_constraint(self) -> bool: ...
    @property
    def targets(self) -> CountScheme: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def oversample(self) -> float: ...
    @property
    def max_inflation(self) -> float: ...
    @property
    def confidence(self) -> float: ...


def read_only(arr: NDArray[Any]) -> NDArray[Any]:
    """A view of arr that a planner cannot write through."""
    view = arr.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True)
class PlanView:
    """What a planner may read about the conversation. Arrays have one entry per task.

    round: requests made so far (0: the first request). weights: z. targets: n (step 1). inflation: m (step 2;
    ones without acceptance-aware inflation). accepted: c, groups accepted so far. estimator: the filter rates.
    """

    round: int
    weights: NDArray[np.float64]
    targets: Counts
    inflation: NDArray[np.float64]
    accepted: Counts
    estimator: FilterRateEstimator

    @property
    def deficit(self) -> Counts:
        """def_k = max(n_k - c_k, 0) (Algorithm 2, step 4)."""
        deficit: Counts = np.maximum(self.targets - self.accepted, 0)
        return deficit


class Planner(Protocol):
    """Plans each round's request counts and selects the batch at the end of the conversation."""

    def plan(self, view: PlanView, rng: np.random.Generator) -> Counts | None:
        """Counts of prompts per task to generate next, shape (K,); None (or all zeros) ends the conversation."""
        ...

    def select(
        self, tasks: Counts, accepted: Counts, targets: Counts, rng: np.random.Generator, staleness: Counts
    ) -> Counts:
        """Report positions forming the batch, from `accepted` (report positions, ascending) of groups `tasks`;
        staleness (n,) is each group's age in steps (> 0: generated at an earlier step)."""
        ...


class PlannerSpec(NamedTuple):
    """A registered planner: how to build it from a config, and the estimator it uses by default."""

    build: Callable[[PlannerConfig], Planner]
    estimator: Callable[[int], FilterRateEstimator]


PLANNER_REGISTRY: dict[str, PlannerSpec] = {}
SWITCH_PLANNERS: tuple[str, ...] = ("dapo", "no-filter")  # chosen by filtering / ratio_constraint, not by name


def register_planner(
    name: str,
    build: Callable[[PlannerConfig], Planner],
    estimator: Callable[[int], FilterRateEstimator] = EMAFilterRate,
) -> None:
    """Make `SamplerConfig(planner=name)` build its planner with `build(config)`; `estimator(K)` is the default."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {v._show(name)}")
    if name in PLANNER_REGISTRY:
        raise ValueError(f"name {name!r} is already a registered planner; expected a new name")
    if not callable(build) or not callable(estimator):
        raise TypeError(f"build and estimator must be callables, got {v._show(build)} and {v._show(estimator)}")
    PLANNER_REGISTRY[name] = PlannerSpec(build, estimator)


def planner_names() -> tuple[str, ...]:
    """Names `SamplerConfig.planner` accepts: the registered ratio-preserving planners, sorted (registration order
    follows import order)."""
    return tuple(sorted(n for n in PLANNER_REGISTRY if n not in SWITCH_PLANNERS))


def planner_for(config: PlannerConfig) -> Planner:
    """The planner a config asks for: no-filter without filtering, DAPO without the ratio constraint, else by name."""
    name = "no-filter" if config.filtering == "none" else config.planner if config.ratio_constraint else "dapo"
    return PLANNER_REGISTRY[name].build(config)


def default_estimator(config: PlannerConfig, num_tasks: int) -> FilterRateEstimator:
    """The filter-rate estimator of the planner named by `config.planner`."""
    return PLANNER_REGISTRY[config.planner].estimator(num_tasks)


def oversampled_request(
    scheme: CountScheme, scores: NDArray[np.float64], total: int, rng: np.random.Generator
) -> Counts | None:
    """nhat ~ Multinomial(M_os * B, zhat) with zhat proportional to scores (Algorithm 2, steps 3 and 5)."""
    if not (scores > 0).any():
        return None
    return draw_counts(scheme, scores / scores.sum(), total, rng)


class PaperPlanner:
    """The paper's rounds: first zhat proportional to z_k m_k, then to def_k m_k (Algorithm 2, steps 2-3 and 5)."""

    def __init__(self, scheme: CountScheme, batch_size: int, oversample: float) -> None:
        self.scheme = scheme
        self.batch_size = batch_size
        self.total = math.ceil(oversample * batch_size)

    @classmethod
    def from_config(cls, config: PlannerConfig) -> PaperPlanner:
        return cls(config.targets, config.batch_size, config.oversample)

    def plan(self, view: PlanView, rng: np.random.Generator) -> Counts | None:
        if view.round == 0:
            return oversampled_request(self.scheme, view.weights * view.inflation, self.total, rng)  # steps 2-3
        deficit = view.deficit  # step 4
        if not deficit.any():
            return None
        return oversampled_request(self.scheme, deficit * view.inflation, self.total, rng)  # step 5

    def select(
        self, tasks: Counts, accepted: Counts, targets: Counts, rng: np.random.Generator, staleness: Counts
    ) -> Counts:
        return select_by_ratio(tasks, accepted, targets, self.batch_size, rng, staleness)


class PosteriorPlanner(PaperPlanner):
    """Per-task requests reaching each deficit with probability `confidence` under a Beta posterior on acceptance
    (beyond the paper; replaces Algorithm 2, steps 2-3 and 5): r_k from `plan_requests`, capped at M_acc * def_k,
    and a round asks for at most M_os * B prompts (shared in proportion to the plan when over). A task the
    posterior knows only from its prior (the first step) is asked for def_k / its prior mean acceptance (2 def_k
    under the flat prior), not a quantile of the prior alone, which is M_acc * def_k."""

    requests = staticmethod(plan_requests)  # (deficit, alpha, beta, confidence, cap) -> counts

    def __init__(
        self, scheme: CountScheme, batch_size: int, oversample: float, max_inflation: float, confidence: float
    ) -> None:
        super().__init__(scheme, batch_size, oversample)
        self.max_inflation = max_inflation
        self.confidence = confidence

    @classmethod
    def from_config(cls, config: PlannerConfig) -> PosteriorPlanner:
        return cls(config.targets, config.batch_size, config.oversample, config.max_inflation, config.confidence)

    def plan(self, view: PlanView, rng: np.random.Generator) -> Counts | None:
        deficit = view.deficit  # the targets in round 0
        if not deficit.any():
            return None
        alpha, beta = posterior_of(view.estimator)
        cap = np.ceil(deficit * self.max_inflation).astype(np.int64)
        prior = unobserved(view.estimator)  # a quantile of the prior alone is its cap: plan its mean instead
        r = self.requests(np.where(prior, 0, deficit), alpha, beta, self.confidence, cap)
        if prior.any():
            at_mean = np.ceil(deficit * (alpha + beta) / alpha).astype(np.int64)
            r = np.where(prior, np.minimum(at_mean, cap), r)
        if r.sum() > self.total:  # share the round budget in proportion to the plan
            r = draw_counts("apportion", r / r.sum(), self.total, rng)
        return r


class DapoPlanner(PaperPlanner):
    """DAPO dynamic sampling, no ratio constraint: Multinomial(M_os B, zhat proportional to z_k m_k) rounds while
    fewer than B groups are accepted; the batch is the first B accepted groups in report order."""

    def plan(self, view: PlanView, rng: np.random.Generator) -> Counts | None:
        if int(view.accepted.sum()) >= int(view.targets.sum()):  # the batch (or groups kept for it) is complete
            return None
        return oversampled_request(self.scheme, view.weights * view.inflation, self.total, rng)

    def select(
        self, tasks: Counts, accepted: Counts, targets: Counts, rng: np.random.Generator, staleness: Counts
    ) -> Counts:
        return select_first(accepted, self.batch_size)


class NoFilterPlanner:
    """Plain GRPO: one request of exactly the target counts n (Algorithm 2, step 1), every group kept."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, config: PlannerConfig) -> NoFilterPlanner:
        return cls(config.batch_size)

    def plan(self, view: PlanView, rng: np.random.Generator) -> Counts | None:
        if view.round > 0 or int(view.accepted.sum()) >= int(view.targets.sum()):  # kept groups fill the batch
            return None
        return view.deficit

    def select(
        self, tasks: Counts, accepted: Counts, targets: Counts, rng: np.random.Generator, staleness: Counts
    ) -> Counts:
        return select_first(accepted, self.batch_size)


register_planner("paper", PaperPlanner.from_config)
register_planner("posterior", PosteriorPlanner.from_config, estimator=BetaFilterRate)
register_planner("dapo", DapoPlanner.from_config)
register_planner("no-filter", NoFilterPlanner.from_config)
