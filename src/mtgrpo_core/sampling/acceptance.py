"""Per-task filter-rate (acceptance) estimators and the posterior request planner.

rho_k is the fraction of task-k groups the zero-gradient filter drops. Algorithm 2 inflates each task's request by
m_k = min(1 / (1 - rho_k), M_acc). Two estimators share one interface (`filter_rate`, `update`, state):
- `EMAFilterRate`: the paper's running estimate, an exponential moving average of each step's observed rate.
- `BetaFilterRate`: a Beta-Bernoulli posterior on the acceptance probability with exponential forgetting, which
  also knows how uncertain it is; `plan_requests` uses that to size requests (beyond the paper).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaln

from mtgrpo_core import checks as v


class FilterRateEstimator(Protocol):
    """Tracks rho_k, the per-task fraction of groups filtered as zero-gradient.

    `state_dict()` returns JSON-native values only (lists, not arrays); `load_state_dict` takes lists or arrays.
    """

    @property
    def num_tasks(self) -> int: ...

    @property
    def filter_rate(self) -> NDArray[np.float64]:
        """Current estimate of rho_k in [0, 1], shape (K,)."""
        ...

    def update(self, generated: ArrayLike, accepted: ArrayLike) -> None:
        """Fold in one step's per-task counts of generated and accepted (informative) groups."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def _counts(num_tasks: int, generated: ArrayLike, accepted: ArrayLike) -> tuple[NDArray[np.int64], ...]:
    gen = v.int_array("generated", generated, ndim=1)
    acc = v.int_array("accepted", accepted, ndim=1)
    for name, arr in (("generated", gen), ("accepted", acc)):
        if arr.shape[0] != num_tasks:
            raise ValueError(f"{name} must have {num_tasks} entries (one per task), got {arr.shape[0]}")
        if (arr < 0).any():
            raise ValueError(f"{name} must be >= 0, got {arr.tolist()}")
    if (acc > gen).any():
        k = int(np.argmax(acc > gen))
        raise ValueError(f"accepted must not exceed generated, got {acc[k]} > {gen[k]} for task {k}")
    return gen, acc


def _state_vector(state: Mapping[str, Any], key: str, num_tasks: int, high: float | None = None) -> NDArray[np.float64]:
    """state[key] as a vector of finite values in [0, high], one per task (a list from JSON, or an array)."""
    if key not in state:
        raise ValueError(f"state must hold {key!r}, got keys {sorted(state)}")
    name = f"state[{key!r}]"
    arr = v.finite_array(name, state[key], ndim=1)
    if arr.shape[0] != num_tasks:
        raise ValueError(f"{name} must have {num_tasks} entries (one per task), got {arr.shape[0]}")
    if (arr < 0).any() or (high is not None and (arr > high).any()):
        raise ValueError(f"{name} must hold values in [0, {'inf' if high is None else high}], got {arr.tolist()}")
    return arr.copy()


def _state_real(state: Mapping[str, Any], key: str, low: float, high: float | None, low_open: bool = False) -> float:
    if key not in state:
        raise ValueError(f"state must hold {key!r}, got keys {sorted(state)}")
    return v.real_in_range(f"state[{key!r}]", state[key], low, high, low_open=low_open)


class EMAFilterRate:
    """The paper's running estimate: rho_k <- (1 - alpha) rho_k + alpha * filtered_k / generated_k.

    Tasks with nothing generated this step keep their estimate. `initial` is rho before any observation.
    """

    def __init__(self, num_tasks: int, alpha: float = 0.5, initial: float = 0.0) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self.alpha = v.real_in_range("alpha", alpha, 0.0, 1.0, low_open=True)
        v.real_in_range("initial", initial, 0.0, 1.0)
        self._rho = np.full(self._k, float(initial))

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def filter_rate(self) -> NDArray[np.float64]:
        return self._rho.copy()

    def update(self, generated: ArrayLike, accepted: ArrayLike) -> None:
        gen, acc = _counts(self._k, generated, accepted)
        seen = gen > 0
        observed = 1.0 - acc[seen] / gen[seen]
        self._rho[seen] = (1.0 - self.alpha) * self._rho[seen] + self.alpha * observed

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "ema_filter_rate", "num_tasks": self._k, "alpha": self.alpha, "rho": self._rho.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, "ema_filter_rate", self._k)
        alpha = _state_real(state, "alpha", 0.0, 1.0, low_open=True)
        self._rho = _state_vector(state, "rho", self._k, high=1.0)
        self.alpha = alpha


class BetaFilterRate:
    """Beta-Bernoulli posterior on each task's acceptance probability a_k = 1 - rho_k.

    Counts decay by `forgetting` per update (1.0 = never forget) because acceptance drifts as the policy learns.
    Posterior: a_k ~ Beta(prior_accept + A_k, prior_filter + F_k) with A, F the discounted counts.
    """

    def __init__(
        self,
        num_tasks: int,
        prior_accept: float = 1.0,
        prior_filter: float = 1.0,
        forgetting: float = 0.5,
    ) -> None:
        self._k = v.positive_int("num_tasks", num_tasks)
        self.prior_accept = v.real_in_range("prior_accept", prior_accept, 0.0, None, low_open=True)
        self.prior_filter = v.real_in_range("prior_filter", prior_filter, 0.0, None, low_open=True)
        self.forgetting = v.real_in_range("forgetting", forgetting, 0.0, 1.0)
        self._accepted = np.zeros(self._k)
        self._filtered = np.zeros(self._k)

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def alpha(self) -> NDArray[np.float64]:
        """Posterior Beta parameter for acceptance (prior + discounted accepted groups)."""
        return self.prior_accept + self._accepted

    @property
    def beta(self) -> NDArray[np.float64]:
        """Posterior Beta parameter for filtering (prior + discounted filtered groups)."""
        return self.prior_filter + self._filtered

    @property
    def filter_rate(self) -> NDArray[np.float64]:
        """Posterior mean of rho_k."""
        return self.beta / (self.alpha + self.beta)

    def update(self, generated: ArrayLike, accepted: ArrayLike) -> None:
        gen, acc = _counts(self._k, generated, accepted)
        seen = gen > 0
        self._accepted[seen] = self.forgetting * self._accepted[seen] + acc[seen]
        self._filtered[seen] = self.forgetting * self._filtered[seen] + (gen - acc)[seen]

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "beta_filter_rate",
            "num_tasks": self._k,
            "prior_accept": self.prior_accept,
            "prior_filter": self.prior_filter,
            "forgetting": self.forgetting,
            "accepted": self._accepted.tolist(),
            "filtered": self._filtered.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, "beta_filter_rate", self._k)
        prior_accept = _state_real(state, "prior_accept", 0.0, None, low_open=True)
        prior_filter = _state_real(state, "prior_filter", 0.0, None, low_open=True)
        forgetting = _state_real(state, "forgetting", 0.0, 1.0)
        accepted = _state_vector(state, "accepted", self._k)
        filtered = _state_vector(state, "filtered", self._k)
        self.prior_accept, self.prior_filter, self.forgetting = prior_accept, prior_filter, forgetting
        self._accepted, self._filtered = accepted, filtered


def posterior_of(estimator: FilterRateEstimator) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Beta parameters (alpha, beta) of each task's acceptance: the estimator's posterior, or a confident Beta
    around a point estimate."""
    if isinstance(estimator, BetaFilterRate):
        return estimator.alpha, estimator.beta
    accept = np.clip(1.0 - estimator.filter_rate, 1e-6, 1.0)
    return 1e6 * accept, 1e6 * (1.0 - accept) + 1e-6


def unobserved(estimator: FilterRateEstimator) -> NDArray[np.bool_]:
    """Tasks a Beta posterior knows only from its prior (no group folded in yet); none for a point estimate."""
    if isinstance(estimator, BetaFilterRate):
        counts = np.stack((estimator.alpha - estimator.prior_accept, estimator.beta - estimator.prior_filter))
        return np.logical_not(counts.any(axis=0))
    return np.zeros(estimator.num_tasks, dtype=np.bool_)


def inflation(filter_rate: NDArray[np.float64], max_inflation: float) -> NDArray[np.float64]:
    """Acceptance-aware inflation m_k = min(1 / (1 - rho_k), M_acc) (Algorithm 2, step 2); rho_k = 1 gives M_acc."""
    accept = 1.0 - filter_rate
    m = np.where(accept > 0, 1.0 / np.where(accept > 0, accept, 1.0), np.inf)  # never divides by 0
    return np.minimum(m, max_inflation)


def fill_pmf(
    deficit: NDArray[np.int64], alpha: NDArray[np.float64], beta: NDArray[np.float64], width: int
) -> NDArray[np.float64]:
    """P(F_k = f) for f = 0..width-1, shape (K, width); every d_k >= 1 (`fill_cdf` sums it).

    F_k, the failures before the d_k-th acceptance, follows a beta-negative-binomial law with the posterior's
    (alpha_k, beta_k): pmf(0) = B(a + d, c) / B(a, c), pmf(f + 1) / pmf(f) = (d + f)(c + f) / ((f + 1)(a + d + c + f)).
    Row k's first w columns do not depend on `width` (every column >= w): a narrower grid is an exact prefix.
    """
    d = deficit.astype(np.float64)[:, None]
    a = alpha[:, None]
    c = beta[:, None]
    f = np.arange(max(width - 1, 0), dtype=np.float64)[None, :]
    log_ratio = np.log((d + f) * (c + f) / ((f + 1.0) * (a + d + c + f)))
    log_pmf0 = betaln(a + d, c) - betaln(a, c)
    log_pmf = log_pmf0 + np.concatenate((np.zeros_like(d), np.cumsum(log_ratio, axis=1)), axis=1)
    return np.asarray(np.exp(log_pmf))


def fill_cdf(
    deficit: NDArray[np.int64], alpha: NDArray[np.float64], beta: NDArray[np.float64], width: int
) -> NDArray[np.float64]:
    """P(accepted_k >= d_k | d_k + f requests) for f = 0..width-1, shape (K, width); every d_k >= 1.

    That is P(F_k <= f) with F_k the failures before the d_k-th acceptance (`fill_pmf`). The sums run left to
    right, so a narrower grid is an exact prefix of a wider one.
    """
    return np.asarray(np.cumsum(fill_pmf(deficit, alpha, beta, width), axis=1))


def plan_requests(
    deficit: NDArray[np.int64],
    alpha: NDArray[np.float64],
    beta: NDArray[np.float64],
    confidence: float,
    max_per_task: NDArray[np.int64],
) -> NDArray[np.int64]:
    """Smallest request r_k with P(accepted_k >= deficit_k) >= confidence under the Beta posterior (beyond the paper).

    r_k is deficit_k plus the `confidence` quantile of its failures (`fill_cdf`), capped at max_per_task[k]
    (a task whose quantile lies past its cap gets the cap). Tasks with no deficit get 0.
    """
    r = np.zeros_like(deficit)
    need = np.flatnonzero(deficit > 0)
    span = np.maximum(max_per_task[need] - deficit[need], 0)
    bucket = np.ceil(np.log2(span + 1.0)).astype(np.int64)  # tasks with similar spans share one grid
    for b in np.unique(bucket):
        tasks = need[bucket == b]
        width = int(2**b)
        reached = fill_cdf(deficit[tasks], alpha[tasks], beta[tasks], width + 1) >= confidence
        failures = np.where(reached.any(axis=1), reached.argmax(axis=1), width)
        r[tasks] = np.minimum(deficit[tasks] + failures, max_per_task[tasks])
    return r


class KnownFilterRate:
    """Filter rates known in advance (e.g. from a calibration run); `update` leaves them unchanged."""

    def __init__(self, filter_rate: ArrayLike) -> None:
        rho = v.finite_array("filter_rate", filter_rate, ndim=1)
        if rho.size == 0 or (rho < 0).any() or (rho > 1).any():
            raise ValueError(f"filter_rate must be a non-empty vector in [0, 1], got {rho.tolist()}")
        self._rho = rho

    @property
    def num_tasks(self) -> int:
        return int(self._rho.shape[0])

    @property
    def filter_rate(self) -> NDArray[np.float64]:
        return self._rho.copy()

    def update(self, generated: ArrayLike, accepted: ArrayLike) -> None:
        _counts(self.num_tasks, generated, accepted)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "known_filter_rate", "num_tasks": self.num_tasks, "rho": self._rho.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, "known_filter_rate", self.num_tasks)
        self._rho = _state_vector(state, "rho", self.num_tasks, high=1.0)
