"""Integer task counts from weights: the paper's multinomial draw and an unbiased systematic apportionment.

Both are used for the sampler's target counts n (Algorithm 2, step 1) and for its request counts (steps 3 and 5).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

CountScheme = Literal["multinomial", "apportion"]
COUNT_SCHEMES: tuple[str, ...] = ("multinomial", "apportion")


def multinomial_counts(weights: NDArray[np.float64], total: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """n ~ Multinomial(total, weights) (Algorithm 2, step 1, as in the paper)."""
    p = weights / weights.sum()
    counts: NDArray[np.int64] = rng.multinomial(total, p).astype(np.int64)
    return counts


def apportioned_counts(weights: NDArray[np.float64], total: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Systematic rounding of total * weights in a random task order (beyond the paper).

    Unbiased (E[n_k] = total * z_k), sums to `total` exactly, and |n_k - total * z_k| < 1 for every task, so the
    realized shares sit within K / (2 total) of z in total variation instead of carrying multinomial noise.
    """
    quota = total * (weights / weights.sum())
    base = np.floor(quota)
    order = rng.permutation(quota.shape[0])
    frac = (quota - base)[order]
    remainder = total - int(base.sum())
    edges = np.concatenate(([0.0], np.cumsum(frac)))
    edges[-1] = remainder  # remove floating-point drift: exactly `remainder` points fall in [0, edges[-1])
    edges = np.maximum.accumulate(edges)
    u = rng.random()
    hits = np.ceil(edges - u).clip(min=0)  # number of points u, u+1, ... below each edge
    extra = np.empty_like(frac)
    extra[order] = np.diff(hits)
    counts: NDArray[np.int64] = (base + extra).astype(np.int64)
    return counts


def draw_counts(
    scheme: CountScheme, weights: NDArray[np.float64], total: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Integer counts summing to `total`, distributed like `weights`, by the named scheme."""
    if scheme == "multinomial":
        return multinomial_counts(weights, total, rng)
    return apportioned_counts(weights, total, rng)
