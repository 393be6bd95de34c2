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

from mtgrpo_core.sampling.acceptance import BetaFilterRate, fill_pmf
from mtgrpo_core.sampling.planners import PosteriorPlanner, register_planner

_LOG_NEVER = -1e6  # log-probabilities below this (probability 0 in float64) are held here: differences stay finite
_SETTLED_PMF = 2.0**-55  # under half an ulp of any CDF value >= 0.5: adding such a term leaves the CDF unchanged
_SCALE_LIMIT = 5e13  # a + d + c + span up to this keeps the tail's pmf ratio below 1 by far more than rounding
_ROUNDING = 2.0**-51  # 4 units in the last place: room for the rounding of a sum of n terms, per term


class _FillGrid:
    """log P(fill_k | d_k + f requests), f = 0..w-1, of some tasks (`rows` index the planner's tasks)."""

    def __init__(self, rows: NDArray[np.int64], logp: NDArray[np.float64]) -> None:
        self.rows = rows
        self.logp = logp
        self.gains = np.minimum.accumulate(np.diff(logp, axis=1), axis=1)  # non-increasing marginal gains


class _FillTable:
    """The clipped log fill probabilities of every task, each row only as wide as the plan needs, in grids of
    tasks computed alike: exactly the values a full (K, max span + 1) table would hold, where they are read.

    A row is complete at its span or where its CDF can no longer change in float64: the CDF is a left-to-right
    sum of the pmf (`fill_pmf`; a narrower grid is an exact prefix); once >= 1 it is clipped to 1, and once it is
    >= 0.5 with a pmf term <= 2^-55 past the pmf's mode (ratio (d+f)(c+f) / ((f+1)(a+d+c+f)) < 1 with room for
    rounding: (f+1)(a+1) >= 2(d-1)(c-1) and a+d+c+span <= 5e13), every later term is under half an ulp of the CDF.
    An incomplete row's later gains are at most its last one (they do not increase).
    """

    def __init__(
        self, d: NDArray[np.int64], alpha: NDArray[np.float64], beta: NDArray[np.float64], span: NDArray[np.int64]
    ) -> None:
        self.d, self.alpha, self.beta, self.span = d, alpha, beta, span
        n = d.shape[0]
        self.grids: list[_FillGrid] = []
        self.grid_of = np.zeros(n, dtype=np.int64)
        self.width = np.zeros(n, dtype=np.int64)
        self.complete = np.zeros(n, dtype=np.bool_)
        self._current: list[tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]] | None = None
        # first width: a third of where most rows settle (the pmf's tail, about f^-(a+1) beyond d + c, is below
        # 10^-16.5 at 1.5 (d + c) 10^(16.5 / (a + 1))): the gains the plan takes end well before, and a row grows
        # only when they may reach its last column. Every row within it up to 32 rows, else 9 rows in 10.
        settle = np.minimum(0.5 * (d + beta) * 10.0 ** (16.5 / (alpha + 1.0)), span + 1.0)
        width = float(settle.max() if n <= 32 else np.sort(settle)[(9 * (n - 1)) // 10])
        self.grow(np.arange(n), 16 * max(math.ceil(width / 16.0), 1))

    def grow(self, tasks: NDArray[np.int64], width: int) -> None:
        """Recompute `tasks` on `width` columns (at most their largest span + 1)."""
        span = self.span[tasks]
        w = min(width, int(span.max()) + 1)
        d, a, c = self.d[tasks], self.alpha[tasks], self.beta[tasks]
        pmf = fill_pmf(d, a, c, w)
        cdf = np.cumsum(pmf, axis=1)
        with np.errstate(divide="ignore"):
            logp = np.maximum(np.log(np.minimum(cdf, 1.0)), _LOG_NEVER)
        df, last = d.astype(np.float64), cdf[:, -1]
        past_mode = (w * (a + 1.0) >= 2.0 * (df - 1.0) * (c - 1.0)) & (a + df + c + span <= _SCALE_LIMIT)
        settled = (last >= 1.0) | ((last >= 0.5) & (pmf[:, -1] <= _SETTLED_PMF) & past_mode)
        self.grid_of[tasks] = len(self.grids)
        self.grids.append(_FillGrid(tasks, logp))
        self.width[tasks] = w
        self.complete[tasks] = (span < w) | settled
        self._current = None

    def finish(self, tasks: NDArray[np.int64]) -> None:
        """Grow `tasks` until every row is complete."""
        tasks = tasks[~self.complete[tasks]]
        while tasks.size:
            self.grow(tasks, 4 * int(self.width[tasks].max()))
            tasks = tasks[~self.complete[tasks]]

    def current(self) -> list[tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]]:
        """(rows, logp, gains) of every grid, rows recomputed since left out."""
        if self._current is not None:
            return self._current
        out = []
        for i, g in enumerate(self.grids):
            live = self.grid_of[g.rows] == i
            if live.all():
                out.append((g.rows, g.logp, g.gains))
            elif live.any():
                out.append((g.rows[live], g.logp[live], g.gains[live]))
        self._current = out
        return out

    def column(self, col: NDArray[np.int64]) -> NDArray[np.float64]:
        """logp of each task at column min(col_k, its last computed column)."""
        out = np.empty(self.d.shape[0])
        for rows, logp, _ in self.current():
            out[rows] = logp[np.arange(rows.size), np.minimum(col[rows], logp.shape[1] - 1)]
        return out


def joint_requests(
    deficit: NDArray[np.int64],
    alpha: NDArray[np.float64],
    beta: NDArray[np.float64],
    confidence: float,
    max_per_task: NDArray[np.int64],
) -> NDArray[np.int64]:
    """Requests r (K,) with prod_k P(fill_k | r_k) >= confidence at (near) the smallest total; tasks without a
    deficit get 0; r_k never exceeds max_per_task[k] (nor falls below deficit_k). alpha, beta: finite, > 0."""
    r = np.zeros_like(deficit)
    need = np.flatnonzero(deficit > 0)
    if need.size == 0:
        return r
    d, cap = deficit[need], np.maximum(max_per_task[need], deficit[need])
    span = cap - d
    table = _FillTable(d, alpha[need], beta[need], span)
    goal = math.log(confidence)
    # Tasks that cannot complete with the others in this round even at their caps need more rounds whatever the
    # others do: the most likely-to-fill tasks whose at-cap probabilities still multiply to `confidence` form the
    # joint constraint; the rest get their caps. (When even lower bounds of the at-cap probabilities, those at
    # the last computed columns, meet the goal with room for rounding, every task is in the constraint.)
    hopeless = np.zeros(need.size, dtype=np.bool_)
    lower = table.column(span)
    if table.complete.all() or float(lower.sum()) - need.size * _ROUNDING * float(np.abs(lower).sum()) < goal:
        table.finish(np.arange(need.size))
        at_cap = table.column(span)
        likeliest = np.argsort(-at_cap, kind="stable")
        hopeless = np.ones(need.size, dtype=np.bool_)
        hopeless[likeliest[np.cumsum(at_cap[likeliest]) >= goal]] = False
    best = np.where(hopeless, span, 0).astype(np.int64)
    target = goal - float(table.column(np.zeros_like(span))[~hopeless].sum())
    if target > 0:
        best = best + _greedy_increments(table, hopeless, target)
    r[need] = d + best
    return r


# per grid: rows, gains, positive gains in the constraint, gains in the constraint
_Cells = list[tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.bool_], NDArray[np.bool_]]]


def _greedy_increments(table: _FillTable, hopeless: NDArray[np.bool_], target: float) -> NDArray[np.int64]:
    """Extra requests per task: the largest marginal gains first until they add up to `target` (all of them when
    they never do).

    Marginal gains of one more prompt per task, made non-increasing (a lower bound on the true gains), so taking
    the largest gains first takes each task's increments in order: greedy is exact for concave log P_k and
    conservative (the joint probability only exceeds the goal) where it is not concave. Ties go to the lower task,
    then the lower increment. Only the computed gains >= a threshold whose gains reach the goal are sorted (the
    first cells of the order over all gains); a row whose uncomputed gains could still be among the gains taken
    (its last computed gain reaches the smallest one taken) grows and the order is taken again. A gain of 0 stays
    0 for the task's later increments: only positive gains can count before the goal is met.
    """
    span = table.span
    while True:
        cells: _Cells = []
        for rows, logp, gains in table.current():
            valid = (np.arange(1, logp.shape[1])[None, :] <= span[rows][:, None]) & ~hopeless[rows][:, None]
            cells.append((rows, gains, valid & (gains > 0), valid))
        few = sum(gains.size for _, gains, _, _ in cells) <= _SORT_ALL
        positive = np.zeros(0) if few else np.concatenate([gains[mask] for _, gains, mask, _ in cells])
        for threshold in _thresholds(positive, target):
            task, gain = _cells_from(cells, threshold)
            order = np.argsort(-gain, kind="stable")
            taken = np.cumsum(gain[order])
            count = int(np.searchsorted(taken, target)) + 1  # the fewest increments reaching the goal
            if count > taken.size and threshold > 0:
                continue
            smallest = float(gain[order[count - 1]]) if count <= taken.size else 0.0
            short = _short_rows(table, cells, hopeless, smallest)
            if short.size:
                table.grow(short, 4 * int(table.width[short].max()))
                break
            if count <= taken.size:
                return np.bincount(task[order[:count]], minlength=span.shape[0]).astype(np.int64)
            return _all_gains(cells, span, hopeless)  # the goal is out of reach


def _cells_from(cells: _Cells, threshold: float) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Task and gain of the positive cells >= threshold, by task, then increment."""
    task_parts, step_parts, gain_parts = [], [], []
    for rows, gains, mask, _ in cells:
        row, step = np.nonzero(mask & (gains >= threshold)) if threshold > 0 else np.nonzero(mask)
        task_parts.append(rows[row])
        step_parts.append(step)
        gain_parts.append(gains[row, step])
    if len(cells) == 1:  # one grid lists its cells by task, then increment, already
        return task_parts[0], gain_parts[0]
    task, gain = np.concatenate(task_parts), np.concatenate(gain_parts)
    by_cell = np.lexsort((np.concatenate(step_parts), task))
    return task[by_cell], gain[by_cell]


def _short_rows(
    table: _FillTable,
    cells: _Cells,
    hopeless: NDArray[np.bool_],
    smallest: float,
) -> NDArray[np.int64]:
    """Incomplete rows in the constraint whose later gains may be positive and >= `smallest`."""
    short = np.zeros(table.span.shape[0], dtype=np.bool_)
    if table.complete[~hopeless].all():
        return np.flatnonzero(short)
    for rows, gains, _, _ in cells:
        if gains.shape[1]:
            last = gains[:, -1]
            short[rows] = ~table.complete[rows] & ~hopeless[rows] & (last > 0) & (last >= smallest)
    return np.flatnonzero(short)


def _all_gains(
    cells: _Cells,
    span: NDArray[np.int64],
    hopeless: NDArray[np.bool_],
) -> NDArray[np.int64]:
    """Every task in the constraint takes all its finite gains (0 past its grid)."""
    usable = np.zeros(span.shape[0], dtype=np.int64)
    for rows, gains, _, valid in cells:
        beyond = np.maximum(span[rows] - gains.shape[1], 0)
        usable[rows] = (valid & np.isfinite(gains)).sum(axis=1) + np.where(hopeless[rows], 0, beyond)
    return usable


_SORT_ALL = 4096  # up to this many positive gains, sort them all


def _thresholds(positive: NDArray[np.float64], target: float) -> list[float]:
    """Gain thresholds to try in turn: the m-th largest gain for the first m = 1024, 4096, ... whose m largest
    gains add up to `target` with room for rounding, then 0 (every positive gain)."""
    m = 1024
    while positive.size > _SORT_ALL and m < positive.size:
        top = np.partition(positive, positive.size - m)[positive.size - m :]
        if float(top.sum()) >= target * (1.0 + 1e-9):
            return [float(top.min()), 0.0]
        m *= 4
    return [0.0]


class JointPlanner(PosteriorPlanner):
    """The posterior planner's rounds with `joint_requests` in place of per-task quantiles (replaces Algorithm 2,
    steps 2-3 and 5): `confidence` is the probability that the whole batch completes in the round."""

    requests = staticmethod(joint_requests)


register_planner("joint", JointPlanner.from_config, estimator=BetaFilterRate)
