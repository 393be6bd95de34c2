"""The joint-quantile planner (beyond the paper): the smallest requests that complete the WHOLE batch in this round
with probability `confidence`, jointly over all tasks.

A per-task confidence q (the posterior planner) completes all K tasks in one round only with probability about
q^K: at K = 100 and q = 0.9 almost never, so rounds pile up. Here each round solves

    minimise sum_k r_k   subject to   prod_k P(accepted_k >= deficit_k | r_k) >= confidence,  d_k <= r_k <= M_acc d_k

under the Beta posterior on each task's acceptance (the failures before the d-th acceptance follow a
beta-negative-binomial law, as in `acceptance.plan_requests`), assuming tasks accept independently. The
log-probabilities add, so the cheapest plan takes the largest marginal gains of one more prompt first (greedy on
the sorted gains, exact where each log P_k is concave in r). When even the caps cannot reach `confidence`, the
tasks least likely to fill get their caps and leave the constraint (they need another round anyway). A round
asks for at most M_os * B prompts (shared in proportion to the plan when over).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from scipy.special import betaln

from mtgrpo_core.acceptance import BetaFilterRate, posterior_of
from mtgrpo_core.planners import PaperPlanner, PlanView, register_planner
from mtgrpo_core.targets import CountScheme, draw_counts

_LOG_NEVER = -1e6  # log-probabilities below this (probability 0 in float64) are held here: differences stay finite

if TYPE_CHECKING:
    from mtgrpo_core.sampler_config import SamplerConfig


def log_fill_probability(
    deficit: NDArray[np.int64], alpha: NDArray[np.float64], beta: NDArray[np.float64], width: int
) -> NDArray[np.float64]:
    """log P(accepted >= d | d + f requests) for f = 0..width-1, shape (K, width), for tasks with d >= 1.

    P(accepted >= d | d + f) = P(F <= f) with F the failures before the d-th acceptance (beta-negative-binomial).
    """
    d = deficit.astype(np.float64)[:, None]
    a, c = alpha[:, None], beta[:, None]
    f = np.arange(max(width - 1, 0), dtype=np.float64)[None, :]
    log_ratio = np.log((d + f) * (c + f) / ((f + 1.0) * (a + d + c + f)))
    log_pmf = (betaln(a + d, c) - betaln(a, c)) + np.concatenate(
        (np.zeros_like(d), np.cumsum(log_ratio, axis=1)), axis=1
    )
    cdf = np.minimum(np.cumsum(np.exp(log_pmf), axis=1), 1.0)
    with np.errstate(divide="ignore"):
        return np.asarray(np.log(cdf))


def joint_requests(
    deficit: NDArray[np.int64],
    alpha: NDArray[np.float64],
    beta: NDArray[np.float64],
    confidence: float,
    max_per_task: NDArray[np.int64],
) -> NDArray[np.int64]:
    """Requests r (K,) with prod_k P(fill_k | r_k) >= confidence at (near) the smallest total; tasks without a
    deficit get 0; r_k never exceeds max_per_task[k] (nor falls below deficit_k)."""
    r = np.zeros_like(deficit)
    need = np.flatnonzero(deficit > 0)
    if need.size == 0:
        return r
    d, cap = deficit[need], np.maximum(max_per_task[need], deficit[need])
    span = cap - d
    width = int(span.max()) + 1
    within = np.arange(width)[None, :] <= span[:, None]
    logp = np.maximum(log_fill_probability(d, alpha[need], beta[need], width), _LOG_NEVER)
    at_cap = logp[np.arange(need.size), span]
    goal = math.log(confidence)
    # Tasks that cannot complete with the others in this round even at their caps need more rounds whatever the
    # others do: the most likely-to-fill tasks whose at-cap probabilities still multiply to `confidence` form the
    # joint constraint; the rest get their caps.
    likeliest = np.argsort(-at_cap, kind="stable")
    hopeless = np.ones(need.size, dtype=np.bool_)
    hopeless[likeliest[np.cumsum(at_cap[likeliest]) >= goal]] = False
    best = np.where(hopeless, span, 0).astype(np.int64)
    target = goal - float(logp[~hopeless, 0].sum())
    if target > 0:
        # Marginal gains of one more prompt per task, made non-increasing (a lower bound on the true gains), so
        # taking the largest gains first takes each task's increments in order: greedy is exact for concave
        # log P_k and conservative (the joint probability only exceeds the goal) where it is not concave.
        gains = np.minimum.accumulate(np.diff(logp, axis=1), axis=1)
        gains[~within[:, 1:] | hopeless[:, None]] = -np.inf
        order = np.argsort(-gains.ravel(), kind="stable")
        usable = int(np.isfinite(gains).sum())
        taken = np.cumsum(gains.ravel()[order[:usable]])
        count = min(int(np.searchsorted(taken, target)) + 1, usable)  # the fewest increments reaching the goal
        extra = np.bincount(order[:count] // (width - 1), minlength=need.size)
        best = best + extra.astype(np.int64)
    r[need] = d + best
    return r


class JointPlanner(PaperPlanner):
    """Requests from `joint_requests` for the deficit of each round (replaces Algorithm 2, steps 2-3 and 5)."""

    def __init__(
        self, scheme: CountScheme, batch_size: int, oversample: float, max_inflation: float, confidence: float
    ) -> None:
        super().__init__(scheme, batch_size, oversample)
        self.max_inflation = max_inflation
        self.confidence = confidence

    @classmethod
    def from_config(cls, config: SamplerConfig) -> JointPlanner:
        return cls(config.targets, config.batch_size, config.oversample, config.max_inflation, config.confidence)

    def plan(self, view: PlanView, rng: np.random.Generator) -> NDArray[np.int64] | None:
        deficit = view.deficit  # the targets in round 0
        if not deficit.any():
            return None
        alpha, beta = posterior_of(view.estimator)
        cap = np.ceil(deficit * self.max_inflation).astype(np.int64)
        r = joint_requests(deficit, alpha, beta, self.confidence, cap)
        if r.sum() > self.total:  # share the round budget in proportion to the plan
            r = draw_counts("apportion", r / r.sum(), self.total, rng)
        return r


register_planner("joint", JointPlanner.from_config, estimator=BetaFilterRate)
