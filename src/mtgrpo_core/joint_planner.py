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

from mtgrpo_core.acceptance import BetaFilterRate, fill_pmf
from mtgrpo_core.planners import PosteriorPlanner, register_planner

_LOG_NEVER = -1e6  # log-probabilities below this (probability 0 in float64) are held here: differences stay finite
_FIRST_WIDTH = 64  # grid columns tried first; a task whose fill probability has not settled gets 4x more
_SETTLED_PMF = 2.0**-55  # under half an ulp of any CDF value >= 0.5: adding such a term leaves the CDF unchanged
_SCALE_LIMIT = 5e13  # a + d + c + span up to this keeps the tail's pmf ratio below 1 by far more than rounding


class _FillGrid:
    """log P(fill_k | d_k + f requests), f = 0..w-1, of a group of tasks (`rows` index the planner's tasks). Past
    column w - 1 a row is constant or past its task's span, so the grid stands for the full (K, max span + 1) one."""

    def __init__(self, rows: NDArray[np.int64], logp: NDArray[np.float64]) -> None:
        self.rows = rows
        self.logp = logp


def _fill_grids(
    d: NDArray[np.int64], alpha: NDArray[np.float64], beta: NDArray[np.float64], span: NDArray[np.int64]
) -> list[_FillGrid]:
    """The clipped log fill probabilities of every task on grids just wide enough: a task's row stops at its span
    or where its CDF can no longer change in float64 (exactly the values a full-width grid would hold).

    The CDF is a left-to-right sum of the pmf (`fill_pmf`); once it is >= 1 it is clipped to 1, and once it is
    >= 0.5 with a pmf term <= 2^-55 past the pmf's mode (ratio (d+f)(c+f) / ((f+1)(a+d+c+f)) < 1 with room for
    rounding: (f+1)(a+1) >= 2(d-1)(c-1) and a+d+c+span <= 5e13), every later term is under half an ulp of the CDF
    and the sum stays as it is.
    """
    grids: list[_FillGrid] = []
    todo = np.arange(d.shape[0])
    width = _FIRST_WIDTH
    while todo.size:
        w = min(width, int(span[todo].max()) + 1)
        dt, at, ct = d[todo], alpha[todo], beta[todo]
        pmf = fill_pmf(dt, at, ct, w)
        cdf = np.cumsum(pmf, axis=1)
        with np.errstate(divide="ignore"):
            logp = np.maximum(np.log(np.minimum(cdf, 1.0)), _LOG_NEVER)
        df, last = dt.astype(np.float64), cdf[:, -1]
        past_mode = (w * (at + 1.0) >= 2.0 * (df - 1.0) * (ct - 1.0)) & (at + df + ct + span[todo] <= _SCALE_LIMIT)
        settled = (last >= 1.0) | ((last >= 0.5) & (pmf[:, -1] <= _SETTLED_PMF) & past_mode)
        done = (span[todo] < w) | settled
        grids.append(_FillGrid(todo[done], logp[done]))
        todo = todo[~done]
        width *= 4
    return grids


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
    grids = _fill_grids(d, alpha[need], beta[need], span)
    first = np.empty(need.size)
    at_cap = np.empty(need.size)
    for g in grids:
        first[g.rows] = g.logp[:, 0]
        at_cap[g.rows] = g.logp[np.arange(g.rows.size), np.minimum(span[g.rows], g.logp.shape[1] - 1)]
    goal = math.log(confidence)
    # Tasks that cannot complete with the others in this round even at their caps need more rounds whatever the
    # others do: the most likely-to-fill tasks whose at-cap probabilities still multiply to `confidence` form the
    # joint constraint; the rest get their caps.
    likeliest = np.argsort(-at_cap, kind="stable")
    hopeless = np.ones(need.size, dtype=np.bool_)
    hopeless[likeliest[np.cumsum(at_cap[likeliest]) >= goal]] = False
    best = np.where(hopeless, span, 0).astype(np.int64)
    target = goal - float(first[~hopeless].sum())
    if target > 0:
        best = best + _greedy_increments(grids, span, hopeless, target)
    r[need] = d + best
    return r


def _greedy_increments(
    grids: list[_FillGrid], span: NDArray[np.int64], hopeless: NDArray[np.bool_], target: float
) -> NDArray[np.int64]:
    """Extra requests per task: the largest marginal gains first until they add up to `target` (all of them when
    they never do).

    Marginal gains of one more prompt per task, made non-increasing (a lower bound on the true gains), so taking
    the largest gains first takes each task's increments in order: greedy is exact for concave log P_k and
    conservative (the joint probability only exceeds the goal) where it is not concave. Ties go to the lower task,
    then the lower increment. A gain of 0 stays 0 for the task's later increments (non-increasing, and a row past
    its grid is constant): only positive gains can count before the goal is met.
    """
    n = span.shape[0]
    usable = np.zeros(n, dtype=np.int64)  # finite gains within the span: what each task takes if the goal is missed
    task_parts, step_parts, gain_parts = [], [], []
    for g in grids:
        w = g.logp.shape[1]
        if w < 2:
            usable[g.rows] = np.where(hopeless[g.rows], 0, span[g.rows])
            continue
        gains = np.minimum.accumulate(np.diff(g.logp, axis=1), axis=1)
        valid = (np.arange(1, w)[None, :] <= span[g.rows][:, None]) & ~hopeless[g.rows][:, None]
        beyond = np.maximum(span[g.rows] - (w - 1), 0)  # past the grid: gains of exactly 0
        usable[g.rows] = (valid & np.isfinite(gains)).sum(axis=1) + np.where(hopeless[g.rows], 0, beyond)
        row, step = np.nonzero(valid & (gains > 0))
        task_parts.append(g.rows[row])
        step_parts.append(step)
        gain_parts.append(gains[row, step])
    if not task_parts:
        return usable
    task, step, gain = (np.concatenate(p) for p in (task_parts, step_parts, gain_parts))
    if len(grids) > 1:  # one grid lists its cells by task, then increment, already
        by_cell = np.lexsort((step, task))
        task, gain = task[by_cell], gain[by_cell]
    order = np.argsort(-gain, kind="stable")
    taken = np.cumsum(gain[order])
    count = int(np.searchsorted(taken, target)) + 1  # the fewest increments reaching the goal
    if count > taken.size:
        return usable
    return np.bincount(task[order[:count]], minlength=n).astype(np.int64)


class JointPlanner(PosteriorPlanner):
    """The posterior planner's rounds with `joint_requests` in place of per-task quantiles (replaces Algorithm 2,
    steps 2-3 and 5): `confidence` is the probability that the whole batch completes in the round."""

    requests = staticmethod(joint_requests)


register_planner("joint", JointPlanner.from_config, estimator=BetaFilterRate)
