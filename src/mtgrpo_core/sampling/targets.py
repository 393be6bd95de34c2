"""How many groups of each task: counts from weights, the batch from the accepted groups, the no-signal guard.

Counts: the paper's multinomial draw and an unbiased systematic apportionment, for the sampler's target counts n
(Algorithm 2, step 1) and its request counts (steps 3 and 5); `fair_share` fits a request into what the
per-step generation cap leaves (beyond the paper).

The batch: Algorithm 2, step 6 (`select_by_ratio`), and DAPO's first B (`select_first`). Both take report
positions of the accepted groups (ascending, i.e. in report order) and return the positions of the batch, in
report order. Randomness comes only from the Generator passed in.

`NoSignalGuard`, a guard against tasks that yield no signal (beyond the paper):

A task whose prompts never give an informative group (always all-wrong, say) gets a low J_k, so a worst-task rule
keeps raising its weight, and the ratio-preserving sampler keeps regenerating for it until the round budget is
spent: every step then generates many times the batch and trains on a short batch. The guard stops that:

- Evidence: per task, the number of groups generated since its last informative group (`dry`).
- A task is barren when `dry` reaches `window` = ceil(log(miss) / log(1 - floor)) groups: the chance that a task
  whose informative rate is `floor` (default 2%: hard, but still signal) shows that many uninformative groups in
  a row is `miss` (default 0.1%). With the defaults the window is 342 groups. A 2% task has a dry run that long
  about once per 50,000 of its groups; when it happens the probes below bring it back within a few steps.
- A barren task is sampled at weight 0 (its share of the batch goes to the other tasks in proportion to their
  weights) except for `probe` groups per step, requested once per step, never inflated or resampled (default: the
  uniform share ceil(B / K), what plain GRPO would spend on it); one informative probe clears it, and informative
  probes may fill the batch. The weighting rule sees a barren task as absent (its weight stops moving on the low
  J_k), and the batch report names it.
- If every task is barren the guard steps aside (nothing to redistribute to); the round budget then bounds the
  step as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v

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


def fair_share(request: NDArray[np.int64], room: int, weights: NDArray[np.float64]) -> NDArray[np.int64]:
    """`request` (K,) fitted into `room` prompts by water-filling (beyond the paper; unchanged when it fits).

    Task k gets min(request_k, its weight share of the room plus what tasks asking for less than their share leave
    over), so a task whose groups are rarely informative cannot take the others' share however much it asks for;
    tasks of weight 0 share only what every weighted task leaves. Sums to `room` exactly (whole prompts go to the
    largest fractions, ties to the lower task).
    """
    if int(request.sum()) <= room:
        return request
    weighted = weights > 0
    out = _water_fill(np.where(weighted, request, 0), room, weights)
    rest = room - int(out.sum())
    if rest > 0:
        out += _water_fill(np.where(weighted, 0, request), rest, np.ones(weights.shape[0]))
    return out


def _water_fill(request: NDArray[np.int64], room: int, weights: NDArray[np.float64]) -> NDArray[np.int64]:
    """min(request_k, t w_k) with the level t that spends `room` (all of `request` if it fits), in whole prompts."""
    if int(request.sum()) <= room:
        return request.copy()
    ask = np.flatnonzero(request > 0)  # every asking task has w_k > 0 here
    r, w = request[ask].astype(np.float64), weights[ask]
    order = np.argsort(r / w, kind="stable")  # tasks in the order the rising level satisfies them
    satisfied = np.concatenate(([0.0], np.cumsum(r[order])[:-1]))
    unsatisfied = np.cumsum(w[order][::-1])[::-1]
    level = (room - satisfied) / unsatisfied  # the level if the tasks from this one on are still below it
    i = int(np.argmax(level <= (r / w)[order]))  # the first task the level does not reach
    share = np.minimum(r, level[i] * w)
    whole = np.floor(share).astype(np.int64)
    extra = room - int(whole.sum())
    whole[np.argsort(whole - share, kind="stable")[:extra]] += 1  # largest fractions first
    out = np.zeros_like(request)
    out[ask] = whole
    return out


def select_first(accepted: NDArray[np.int64], batch_size: int) -> NDArray[np.int64]:
    """DAPO dynamic sampling: the first B accepted groups in report order (all of them if fewer)."""
    return accepted[:batch_size]


def select_by_ratio(
    tasks: NDArray[np.int64],
    accepted: NDArray[np.int64],
    targets: NDArray[np.int64],
    batch_size: int,
    rng: np.random.Generator,
    staleness: NDArray[np.int64] | None = None,
) -> NDArray[np.int64]:
    """Algorithm 2, step 6: with at most B accepted groups keep them all; otherwise keep a uniform random subset of
    at most n_k accepted groups of each task k, then fill up to exactly B with a uniform random subset of the
    remaining accepted groups. Beyond the paper: groups generated at an earlier step come first within their task,
    oldest first (they would expire), in random order among groups of one age.

    tasks: (n,) task of every reported group. accepted: (a,) report positions. targets: (K,) n. staleness: (n,).
    """
    if accepted.shape[0] <= batch_size:
        return accepted[:batch_size]
    t = tasks[accepted]
    age = np.zeros(accepted.shape[0]) if staleness is None else staleness[accepted].astype(np.float64)
    oldest = max(1.0, float(age.max(initial=0.0)))
    priority = (oldest - age + rng.random(accepted.shape[0])) / (oldest + 1)  # in [0, 1): the older, the smaller
    order = np.argsort(t + priority, kind="stable")  # by task, oldest first, random within an age
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


def within_cap(
    plan: NDArray[np.int64], probes: NDArray[np.int64], room: int, weights: NDArray[np.float64]
) -> tuple[NDArray[np.int64], bool]:
    """A round's plan plus the guard's probes fitted into the `room` the generation cap leaves: probes first (evenly),
    then the plan by `fair_share` on the weights; also whether anything was cut."""
    fitted_probes = fair_share(probes, room, np.ones(plan.shape[0]))
    fitted = fair_share(plan, room - int(fitted_probes.sum()), weights)
    return fitted + fitted_probes, int(fitted.sum() + fitted_probes.sum()) < int(plan.sum() + probes.sum())


def guard_window(floor: float, miss: float) -> int:
    """Uninformative groups in a row after which a task is barren: ceil(log(miss) / log(1 - floor))."""
    f = v.real_in_range("floor", floor, 0.0, 1.0, low_open=True, high_open=True)
    m = v.real_in_range("miss", miss, 0.0, 1.0, low_open=True, high_open=True)
    return max(1, math.ceil(math.log(m) / math.log1p(-f)))


class NoSignalGuard:
    """Per-task dry runs and the barren set they imply; explicit, JSON-native state."""

    KIND = "no_signal_guard"

    def __init__(self, num_tasks: int, floor: float = 0.02, miss: float = 1e-3, probe: int = 1) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self.window = guard_window(floor, miss)
        self.probe = v.positive_int("probe", probe, minimum=0)
        self._dry = np.zeros(self._k, dtype=np.int64)

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def barren(self) -> NDArray[np.bool_]:
        """Tasks sampled only by probes now; none when every task would be (the guard steps aside)."""
        barren = self._dry >= self.window
        return barren if not barren.all() else np.zeros(self._k, dtype=np.bool_)

    def sampling_weights(self, weights: NDArray[np.float64]) -> NDArray[np.float64]:
        """z with barren tasks at 0 and the rest renormalised (unchanged when nothing is barren or the rest has
        no weight)."""
        barren = self.barren
        if not barren.any():
            return weights
        kept = np.where(barren, 0.0, weights)
        total = kept.sum()
        return weights if total <= 0 else kept / total

    def probes(self) -> NDArray[np.int64]:
        """Groups to request from each task beyond the plan: `probe` for barren tasks, 0 otherwise."""
        return np.where(self.barren, self.probe, 0).astype(np.int64)

    def update(self, generated: NDArray[np.int64], informative: NDArray[np.int64]) -> None:
        """Fold in one step: a task with an informative group restarts its dry run, others extend it."""
        self._dry = np.where(informative > 0, 0, self._dry + generated)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "num_tasks": self._k, "window": self.window, "dry": self._dry.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, self.KIND, self._k)
        if state.get("window") != self.window:
            raise ValueError(f"state['window'] is {state.get('window')!r}, expected {self.window} (other settings)")
        dry = v.int_array("state['dry']", state.get("dry", []), ndim=1)
        if dry.shape != (self._k,) or (dry < 0).any():
            raise ValueError(f"state['dry'] must be {self._k} non-negative ints, got {dry.tolist()}")
        self._dry = dry.copy()


def ahead_credit(
    need: NDArray[np.int64],
    steps_ahead: int,
    kept: NDArray[np.int64] | None,
    expected: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]] | None,
    targets: NDArray[np.int64],
) -> NDArray[np.int64]:
    """Groups per task an ahead request may count on for its batch, beyond what the batches before it take (each
    `need`). After finish(): the kept groups' tasks (`kept`). Before it: this step's expected surplus, from
    `expected` = (accepted so far, groups still awaited from due ahead requests, acceptance estimate), less this
    step's `targets` (the expectation rounded down: a shortfall is resampled at the due step)."""
    if kept is not None:
        supply = np.bincount(kept, minlength=need.shape[0])
    else:
        assert expected is not None
        accepted, pending, acceptance = expected
        supply = np.maximum(accepted + np.floor(pending * acceptance).astype(np.int64) - targets, 0)
    return np.asarray(np.maximum(supply - (steps_ahead - 1) * need, 0), dtype=np.int64)
