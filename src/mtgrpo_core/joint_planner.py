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

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core.acceptance import BetaFilterRate, fill_cdf
from mtgrpo_core.planners import PosteriorPlanner, register_planner

_LOG_NEVER = -1e6  # log-probabilities below this (probability 0 in float64) are held here: differences stay finite


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
    with np.errstate(divide="ignore"):
        logp = np.maximum(np.log(np.minimum(fill_cdf(d, alpha[need], beta[need], width), 1.0)), _LOG_NEVER)
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


class JointPlanner(PosteriorPlanner):
    """The posterior planner's rounds with `joint_requests` in place of per-task quantiles (replaces Algorithm 2,
    steps 2-3 and 5): `confidence` is the probability that the whole batch completes in the round."""

    requests = staticmethod(joint_requests)


register_planner("joint", JointPlanner.from_config, estimator=BetaFilterRate)
