"""Which accepted groups form the batch: Algorithm 2, step 6, and DAPO's first B.

Both take report positions of the accepted groups (ascending, i.e. in report order) and return the positions of
the batch, in report order. Randomness comes only from the Generator passed in.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def select_first(accepted: NDArray[np.int64], batch_size: int) -> NDArray[np.int64]:
    """DAPO dynamic sampling: the first B accepted groups in report order (all of them if fewer)."""
    return accepted[:batch_size]


def select_by_ratio(
    tasks: NDArray[np.int64],
    accepted: NDArray[np.int64],
    targets: NDArray[np.int64],
    batch_size: int,
    rng: np.random.Generator,
    carried: NDArray[np.bool_] | None = None,
) -> NDArray[np.int64]:
    """Algorithm 2, step 6: with at most B accepted groups keep them all; otherwise keep a uniform random subset of
    at most n_k accepted groups of each task k, then fill up to exactly B with a uniform random subset of the
    remaining accepted groups. Beyond the paper: groups carried from an earlier step come first within their task
    (they would expire), in random order among themselves.

    tasks: (n,) task of every reported group. accepted: (a,) report positions. targets: (K,) n. carried: (n,).
    """
    if accepted.shape[0] <= batch_size:
        return accepted[:batch_size]
    t = tasks[accepted]
    late = 1.0 if carried is None else np.where(carried[accepted], 0.0, 1.0)
    priority = (late + rng.random(accepted.shape[0])) / 2  # carried in [0, 0.5), fresh in [0.5, 1)
    order = np.argsort(t + priority, kind="stable")  # by task, carried first, random within each
    sorted_t = t[order]
    starts = np.concatenate(([0], np.cumsum(np.bincount(sorted_t, minlength=targets.shape[0]))[:-1]))
    rank = np.arange(sorted_t.shape[0]) - starts[sorted_t]
    keep = np.zeros(accepted.shape[0], dtype=np.bool_)
    keep[order] = rank < targets[sorted_t]
    rest = np.flatnonzero(~keep)
    fill = batch_size - int(keep.sum())
    if fill > 0:  # a uniform random subset of the rest: the `fill` smallest of fresh uniform priorities
        keep[rest[np.argpartition(rng.random(rest.shape[0]), fill - 1)[:fill]]] = True
    return accepted[keep]
